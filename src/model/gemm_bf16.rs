//! Matrix products of bf16 operands on CPUs with AVX512-BF16 (`vdpbf16ps`): each pair of bf16
//! products is summed into f32 accumulators and the result rounded once (to nearest even), as
//! PyTorch's bf16 autocast gets it from oneDNN on such CPUs. Elsewhere candle widens bf16 to f32,
//! multiplies in f32 and narrows back. Which is faster depends on the core ([`preferred`]).
//!
//! Each product packs its operands once: A in panels of `MR` rows where a row's column pair
//! (k, k + 1) is one 32-bit word (broadcast to every lane), B in panels of `NR` columns where each
//! column's row pair is interleaved (the two bf16 a `vdpbf16ps` lane multiplies with that word).
//! The micro-kernel keeps an `MR` × `NR` tile of f32 accumulators in 24 registers over the whole
//! depth, so the depth is not blocked and each result is written once. B is cut into column
//! blocks that stay in the L2 cache while every A panel streams past them; the blocks (and the
//! batches) are what the threads share out.

use half::bf16;
use rayon::prelude::*;

/// Rows of a micro-tile (one broadcast A word each).
const MR: usize = 6;
/// Columns of a micro-tile (four registers of 16 f32 lanes), and of a packed B panel.
pub(super) const NR: usize = 64;
/// Bytes of packed B one column block holds (within the L2 cache of every AVX512-BF16 CPU).
const B_BLOCK_BYTES: usize = 384 * 1024;
/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 20;

/// Whether this CPU has AVX512-BF16 (with the AVX-512 subsets the kernel also uses).
pub fn available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(detect)
}

/// Whether the model's bf16 products use this kernel rather than candle's widening to f32: on AMD
/// cores with AVX512-BF16 (Zen 4 and later), where `vdpbf16ps` retires 32 multiply-adds in the
/// time of 16 f32 ones (PyTorch's bf16 matmul, the same instruction through oneDNN, ran at 2.4×
/// its f32 on such a machine). Intel cores without AMX run it at half their f32 FMA rate (measured:
/// 83 against 175 GFLOP/s per core), so there the widened f32 product is faster (docs/performance.md).
/// With AMX (`gemm_amx`) the tiles beat the f32 units by far, on any vendor.
pub fn preferred() -> bool {
    static AMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    available() && (*AMD.get_or_init(amd) || super::gemm_amx::available())
}

#[cfg(target_arch = "x86_64")]
fn amd() -> bool {
    let id = std::arch::x86_64::__cpuid(0);
    let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    vendor == b"AuthenticAMD"
}

#[cfg(not(target_arch = "x86_64"))]
fn amd() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// What an operand may hold: bf16, or f32 rounded to bf16 (nearest even) as it is packed, so that a
/// product of f32 tensors with bf16 operands costs no extra pass (autocast's products).
pub trait Element: Copy + Send + Sync {
    /// Whether taking the bits rounds (f32), rather than reading them (bf16).
    const ROUNDS: bool;
    fn bits(self) -> u16;
    /// Every element's bits into `dst`, which is as long as `src`.
    fn bits_into(src: &[Self], dst: &mut [u16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.bits();
        }
    }
}

impl Element for bf16 {
    const ROUNDS: bool = false;
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

impl Element for f32 {
    const ROUNDS: bool = true;
    fn bits(self) -> u16 {
        bf16::from_f32(self).to_bits()
    }

    fn bits_into(src: &[f32], dst: &mut [u16]) {
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: available() checked the instructions.
            unsafe { round_to_bf16(src, dst) };
            return;
        }
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.bits();
        }
    }
}

/// `src` rounded to bf16 (nearest even) 16 at a time with `vcvtneps2bf16`, the rest one by one.
///
/// SAFETY: the CPU has AVX512-BF16 (with F, BW, VL).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn round_to_bf16(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let whole = n - n % 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: i + 16 <= n, inside both slices.
        unsafe {
            let v = _mm512_loadu_ps(src.as_ptr().add(i));
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
        }
    }
    for i in whole..n {
        dst[i] = src[i].bits();
    }
}

/// One operand of a batched product: element (i, j) of batch `b` is
/// `data[offsets[b] + i * rs + j * cs]` (any strides, a transposed view included).
pub struct Strided<'a, E: Element = bf16> {
    pub data: &'a [E],
    pub offsets: Vec<usize>,
    pub rs: usize,
    pub cs: usize,
}

impl<E: Element> Strided<'_, E> {
    pub(super) fn at(&self, batch: usize, i: usize, j: usize) -> u16 {
        self.data[self.offsets[batch] + i * self.rs + j * self.cs].bits()
    }
}

/// What a product writes: bf16 (what the model computes with) or f32 (the accumulators as they
/// are, for tests).
pub trait Output: Copy + Send + Sync {
    /// Whether the kernel stores f32 rather than bf16.
    const F32: bool;
}

impl Output for bf16 {
    const F32: bool = false;
}

impl Output for f32 {
    const F32: bool = true;
}

/// The shape of a batched product: `batches` times A [m, k] · B [k, n].
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batches: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// out [batches, m, n] (row-major) = A · B for each batch: on AMX tiles where the CPU has them
/// (`gemm_amx`), else with `vdpbf16ps`. Panics when the CPU lacks AVX512-BF16 ([`available`]) or
/// an operand is shorter than its strides say.
pub fn matmul<A: Element, B: Element, T: Output>(
    a: &Strided<A>,
    b: &Strided<B>,
    d: Dims,
    out: &mut [T],
) {
    assert_eq!(out.len(), d.batches * d.m * d.n);
    if out.is_empty() {
        return;
    }
    if super::gemm_amx::available() {
        return super::gemm_amx::matmul(a, b, d, out, parallel(d));
    }
    vector_matmul(a, b, d, out, parallel(d))
}

/// Whether a product of these dimensions is shared out to rayon's threads (below
/// `PARALLEL_WORK` multiply-adds it runs on the calling thread).
pub(super) fn parallel(d: Dims) -> bool {
    d.batches * d.m * d.n * d.k >= PARALLEL_WORK && rayon::current_num_threads() > 1
}

/// [`matmul`] with `vdpbf16ps` whatever the CPU has beyond AVX512-BF16; `out` is not empty.
pub(super) fn vector_matmul<A: Element, B: Element, T: Output>(
    a: &Strided<A>,
    b: &Strided<B>,
    d: Dims,
    out: &mut [T],
    parallel: bool,
) {
    assert!(available(), "bf16 matmul without AVX512-BF16");
    let kp = d.k.div_ceil(2);
    let row_blocks = d.m.div_ceil(MR);

    let mut packed_a = vec![0u32; d.batches * row_blocks * kp * MR];
    // An empty depth leaves every panel empty (and the result zero).
    if kp > 0 {
        if A::ROUNDS && a.rs == 1 && a.cs != 1 && d.m > 0 {
            let columns = rounded_columns(a, d, parallel);
            let view = Strided {
                data: &columns[..],
                offsets: (0..d.batches).map(|b| b * d.k * d.m).collect(),
                rs: 1,
                cs: d.m,
            };
            pack_panels(&view, d, parallel, &mut packed_a);
        } else {
            pack_panels(a, d, parallel, &mut packed_a);
        }
    }
    let out_ptr = SharedOut(out.as_mut_ptr());
    for_each_b_block(b, d, kp, B_BLOCK_BYTES, parallel, |blk, packed_b| {
        let (batch, j0, cols) = (blk.batch, blk.j0, blk.cols);
        let panels = cols.div_ceil(NR);
        for rb in 0..row_blocks {
            let i0 = rb * MR;
            let a_panel = &packed_a[(batch * row_blocks + rb) * kp * MR..][..kp * MR];
            for p in 0..panels {
                let b_panel = &packed_b[p * kp * 2 * NR..][..kp * 2 * NR];
                let tile = Tile {
                    rows: MR.min(d.m - i0),
                    cols: NR.min(cols - p * NR),
                    // In bounds: the tile's first element lies inside this batch's [m, n].
                    offset: batch * d.m * d.n + i0 * d.n + j0 + p * NR,
                    stride: d.n,
                };
                // SAFETY: available() was asserted; the panels hold kp pairs; the tile's rows and
                // columns lie inside `out`, and no other block writes these columns of this batch.
                unsafe { kernel::<T>(kp, a_panel, b_panel, out_ptr.at(tile.offset), &tile) };
            }
        }
    });
}

/// `data` in chunks of `len`, each filled by `fill(index, chunk)`, on rayon's threads when
/// `parallel`.
pub(super) fn pack_chunks<W: Send>(
    data: &mut [W],
    len: usize,
    parallel: bool,
    fill: impl Fn(usize, &mut [W]) + Sync,
) {
    if parallel {
        data.par_chunks_mut(len)
            .enumerate()
            .for_each(|(i, c)| fill(i, c));
    } else {
        data.chunks_mut(len)
            .enumerate()
            .for_each(|(i, c)| fill(i, c));
    }
}

thread_local! {
    /// The packed B block of this thread's current product ([`for_each_b_block`]).
    static PACKED_B: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

/// One column block of B: columns `j0 .. j0 + cols` of batch `batch`.
pub(super) struct BBlock {
    pub batch: usize,
    pub j0: usize,
    pub cols: usize,
}

/// Cuts every batch of B into column blocks whose packing (`kp` row pairs, panels of NR columns)
/// takes about `block_bytes` (so that a block stays in L2 while the A panels stream past), packs
/// each and hands it to `f`; the blocks are what the threads share out when `parallel`.
pub(super) fn for_each_b_block<B: Element>(
    b: &Strided<B>,
    d: Dims,
    kp: usize,
    block_bytes: usize,
    parallel: bool,
    f: impl Fn(&BBlock, &[u16]) + Sync,
) {
    // Each packed column takes kp words of two bf16.
    let block_cols = ((block_bytes / (kp.max(1) * 4)) / NR).max(1) * NR;
    let col_blocks = d.n.div_ceil(block_cols);
    let block = |item: usize| {
        let (batch, j0) = (item / col_blocks, (item % col_blocks) * block_cols);
        let blk = BBlock {
            batch,
            j0,
            cols: block_cols.min(d.n - j0),
        };
        // Each thread keeps its block buffer between products: a fresh one per block would be
        // zeroed page by page by the kernel on first touch.
        PACKED_B.with(|buf| {
            let mut packed = buf.take();
            packed.clear();
            packed.resize(blk.cols.div_ceil(NR) * kp * 2 * NR, 0);
            pack_b(b, batch, j0, blk.cols, kp, d, &mut packed);
            f(&blk, &packed);
            buf.set(packed);
        });
    };
    if parallel {
        (0..d.batches * col_blocks).into_par_iter().for_each(block);
    } else {
        (0..d.batches * col_blocks).for_each(block);
    }
}

thread_local! {
    /// Scratch of this thread's A packing: one row's bf16 bits.
    static ROW_BITS: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Rows i0 .. i0 + MR of batch `batch` of A: for each column pair, the row's two bf16 as one word
/// (low half the even column), zeros past the matrix (`dst` comes zeroed). A row-major operand is
/// rounded a row at a time (16 values an instruction for f32); other layouts element by element
/// (a column-major f32 operand is rounded as a whole first: [`rounded_columns`]).
fn pack_a<A: Element>(a: &Strided<A>, batch: usize, i0: usize, d: Dims, dst: &mut [u32]) {
    let rows = MR.min(d.m - i0);
    if a.cs == 1 {
        let kp = d.k.div_ceil(2);
        let start = a.offsets[batch] + i0 * a.rs;
        ROW_BITS.with(|cell| {
            let mut bits = cell.take();
            bits.clear();
            bits.resize(2 * kp, 0);
            for r in 0..rows {
                A::bits_into(&a.data[start + r * a.rs..][..d.k], &mut bits[..d.k]);
                // Bits past the depth stay zero: the odd depth's last word has a zero high half.
                for (p, pair) in bits.chunks_exact(2).enumerate() {
                    dst[p * MR + r] = u32::from(pair[0]) | u32::from(pair[1]) << 16;
                }
            }
            cell.set(bits);
        });
        return;
    }
    for r in 0..rows {
        for p in 0..d.k / 2 {
            let (lo, hi) = (a.at(batch, i0 + r, 2 * p), a.at(batch, i0 + r, 2 * p + 1));
            dst[p * MR + r] = u32::from(lo) | u32::from(hi) << 16;
        }
        if d.k % 2 == 1 {
            dst[(d.k / 2) * MR + r] = u32::from(a.at(batch, i0 + r, d.k - 1));
        }
    }
}

/// Every MR-row panel of every batch of A into `packed` ([`pack_a`]'s layout, panel after panel).
fn pack_panels<A: Element>(a: &Strided<A>, d: Dims, parallel: bool, packed: &mut [u32]) {
    let (kp, row_blocks) = (d.k.div_ceil(2), d.m.div_ceil(MR));
    pack_chunks(packed, kp * MR, parallel, |panel, dst| {
        pack_a(a, panel / row_blocks, (panel % row_blocks) * MR, d, dst)
    });
}

/// A column-major operand (each column's rows contiguous: a transposed activation in a backward)
/// rounded to bf16 as a whole, column by column in bulk, laid out as [batch][column][row]; packing
/// it panel by panel from the f32 values would round each element on its own.
fn rounded_columns<A: Element>(a: &Strided<A>, d: Dims, parallel: bool) -> Vec<bf16> {
    use half::slice::HalfFloatSliceExt;
    let mut out = vec![bf16::ZERO; d.batches * d.k * d.m];
    pack_chunks(
        out.reinterpret_cast_mut(),
        d.m.max(1),
        parallel,
        |column, dst| {
            let (batch, k) = (column / d.k.max(1), column % d.k.max(1));
            A::bits_into(&a.data[a.offsets[batch] + k * a.cs..][..d.m], dst);
        },
    );
    out
}

/// Columns j0 .. j0 + cols of batch `batch` of B, in panels of NR columns of `kp` row pairs (at
/// least the depth's): for each row pair, each column's two bf16 side by side, zeros past the
/// matrix.
pub(super) fn pack_b<B: Element>(
    b: &Strided<B>,
    batch: usize,
    j0: usize,
    cols: usize,
    kp: usize,
    d: Dims,
    dst: &mut [u16],
) {
    let start = b.offsets[batch];
    let pairs = d.k.div_ceil(2);
    // A row pair of one column is one 32-bit word (the even row in the low half): written as words
    // where the buffer allows (it always does from the allocator; checked, not assumed).
    // SAFETY: any bit pattern is a valid u32 and u16; align_to_mut splits at aligned bounds.
    let (head, words, _) = unsafe { dst.align_to_mut::<u32>() };
    let at = |c: usize, p: usize| (c / NR) * kp * NR + p * NR + c % NR;
    if head.is_empty() && b.cs == 1 && d.k > 0 {
        // Row-major B: two rows at a time, interleaved into words.
        let (mut lo, mut hi) = (vec![0u16; cols], vec![0u16; cols]);
        for p in 0..pairs {
            let row = start + 2 * p * b.rs + j0;
            B::bits_into(&b.data[row..][..cols], &mut lo);
            if 2 * p + 1 < d.k {
                B::bits_into(&b.data[row + b.rs..][..cols], &mut hi);
            } else {
                hi.fill(0);
            }
            for (c, (&l, &h)) in lo.iter().zip(&hi).enumerate() {
                words[at(c, p)] = u32::from(l) | u32::from(h) << 16;
            }
        }
        return;
    }
    if head.is_empty() && b.rs == 1 && d.k > 0 {
        // Column-major B (a transposed weight): each column's rows are contiguous pairs already.
        let mut column = vec![0u16; 2 * pairs];
        for c in 0..cols {
            B::bits_into(
                &b.data[start + (j0 + c) * b.cs..][..d.k],
                &mut column[..d.k],
            );
            for (p, pair) in column.chunks_exact(2).enumerate() {
                words[at(c, p)] = u32::from(pair[0]) | u32::from(pair[1]) << 16;
            }
        }
        return;
    }
    for c in 0..cols {
        let (panel, lane) = (c / NR, c % NR);
        let base = panel * kp * 2 * NR + 2 * lane;
        for row in 0..d.k {
            dst[base + (row / 2) * 2 * NR + row % 2] = b.at(batch, row, j0 + c);
        }
    }
}

/// Where one micro-tile of the result goes: `rows` × `cols` (at most MR × NR) from `offset`,
/// `stride` elements per row.
struct Tile {
    rows: usize,
    cols: usize,
    offset: usize,
    stride: usize,
}

/// The result's buffer, written by several threads at disjoint tiles.
pub(super) struct SharedOut<T>(pub(super) *mut T);

// SAFETY: the blocks write disjoint elements (see `matmul`), and the buffer outlives them.
unsafe impl<T: Send> Send for SharedOut<T> {}
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// SAFETY: `offset` must lie inside the buffer.
    pub(super) unsafe fn at(&self, offset: usize) -> *mut T {
        unsafe { self.0.add(offset) }
    }
}

/// One MR × NR tile: Σ over the kp pairs of A's broadcast word times B's four registers, stored
/// (rounded to bf16 unless `T` is f32) for the tile's rows and columns.
///
/// SAFETY: the CPU has AVX512-BF16 (with F, BW, VL); `a` holds kp · MR words and `b` kp · 2 · NR
/// bf16; `c` through `c + (rows - 1) · stride + cols` is writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn kernel<T: Output>(kp: usize, a: &[u32], b: &[u16], c: *mut T, tile: &Tile) {
    use std::arch::x86_64::*;
    // SAFETY (of the transmutes): __m512i and __m512bh are both 512 bits of plain lanes.
    let bh = |v: __m512i| -> __m512bh { unsafe { std::mem::transmute(v) } };
    let mut acc = [_mm512_setzero_ps(); MR * 4];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..kp {
        // SAFETY: pair p's words and bf16 lie inside the panels (the caller's bounds).
        let (ap, bp) = unsafe { (a.add(p * MR), b.add(p * 2 * NR)) };
        let bv: [__m512bh; 4] = std::array::from_fn(|q| {
            bh(unsafe { _mm512_loadu_si512(bp.add(q * 32) as *const __m512i) })
        });
        for r in 0..MR {
            let av = bh(_mm512_set1_epi32(unsafe { *ap.add(r) } as i32));
            for q in 0..4 {
                acc[r * 4 + q] = _mm512_dpbf16_ps(acc[r * 4 + q], av, bv[q]);
            }
        }
    }
    for r in 0..tile.rows {
        for q in 0..4 {
            let col = q * 16;
            if col >= tile.cols {
                break;
            }
            let mask: u16 = if tile.cols - col >= 16 {
                u16::MAX
            } else {
                (1u16 << (tile.cols - col)) - 1
            };
            // SAFETY: row r < rows, columns col .. col + 16 masked to < cols.
            let dst = unsafe { c.add(r * tile.stride + col) };
            if T::F32 {
                unsafe { _mm512_mask_storeu_ps(dst as *mut f32, mask, acc[r * 4 + q]) };
            } else {
                let v: __m256i = unsafe { std::mem::transmute(_mm512_cvtneps_pbh(acc[r * 4 + q])) };
                unsafe { _mm256_mask_storeu_epi16(dst as *mut i16, mask, v) };
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<T: Output>(_: usize, _: &[u32], _: &[u16], _: *mut T, _: &Tile) {
    unreachable!("available() is false off x86-64")
}

/// For the kernel's tests: whether this CPU can run it. Where it cannot, the kernel is never
/// called, and what is left to check is that the detection agrees with the kernel's report of the
/// CPU (/proc/cpuinfo has no `avx512_bf16`).
#[cfg(test)]
pub(crate) fn kernel_testable() -> bool {
    if available() {
        return true;
    }
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    assert!(!flags.split_whitespace().any(|f| f == "avx512_bf16"));
    eprintln!("no AVX512-BF16 on this CPU: the kernel is not run here");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random bf16 in [-2, 2): products and sums are not exact in f32, and a misplaced lane or
    /// pair changes the result.
    fn values(n: usize, seed: u64) -> Vec<bf16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
            })
            .collect()
    }

    /// The product in f64 of the same bf16 values.
    fn reference(a: &Strided, b: &Strided, d: Dims) -> Vec<f64> {
        let mut out = vec![0.0; d.batches * d.m * d.n];
        for bt in 0..d.batches {
            for i in 0..d.m {
                for j in 0..d.n {
                    out[(bt * d.m + i) * d.n + j] = (0..d.k)
                        .map(|l| {
                            f64::from(bf16::from_bits(a.at(bt, i, l)))
                                * f64::from(bf16::from_bits(b.at(bt, l, j)))
                        })
                        .sum();
                }
            }
        }
        out
    }

    /// Every shape edge: rows and columns not multiples of the tile, odd depths, a depth of 1 and
    /// 0, column blocks, batches, and transposed (column-major) operands; every element stored.
    #[test]
    fn equals_the_f64_product_of_the_same_values_within_f32_rounding() {
        if !kernel_testable() {
            return;
        }
        for &(batches, m, n, k, a_t, b_t) in &[
            (1, 1, 1, 1, false, false),
            (1, 7, 65, 3, false, true),
            (2, 13, 130, 64, true, false),
            (3, 6, 64, 0, false, false),
            (1, 37, 3100, 129, false, true),
            (1, 64, 200, 2049, true, true),
        ] {
            let d = Dims { batches, m, n, k };
            let (va, vb) = (values(batches * m * k, 1), values(batches * k * n, 2));
            let a = Strided {
                data: &va,
                offsets: (0..batches).map(|b| b * m * k).collect(),
                rs: if a_t { 1 } else { k },
                cs: if a_t { m } else { 1 },
            };
            let b = Strided {
                data: &vb,
                offsets: (0..batches).map(|x| x * k * n).collect(),
                rs: if b_t { 1 } else { n },
                cs: if b_t { k } else { 1 },
            };
            let want = reference(&a, &b, d);
            // The AMX tiles where the CPU has them, and the vector kernel everywhere.
            let amx = crate::model::gemm_amx::available();
            for (path, vector) in [("amx", false), ("vector", true)] {
                if path == "amx" && !amx {
                    continue;
                }
                // NaN where nothing is stored: every element must be (the outputs are not
                // zero-filled before the kernel, fused::unfilled).
                let mut got = vec![f32::NAN; want.len()];
                let mut rounded = vec![bf16::NAN; want.len()];
                if vector {
                    vector_matmul(&a, &b, d, &mut got, parallel(d));
                    vector_matmul(&a, &b, d, &mut rounded, parallel(d));
                } else {
                    matmul(&a, &b, d, &mut got);
                    matmul(&a, &b, d, &mut rounded);
                }
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    // k · 4 · 2⁻²³: well above the rounding of f32 sums of k products of magnitude
                    // ≤ 4 in any order, well below what a misplaced lane or pair costs (order 1).
                    let tol = (k as f64) * 4.0 * f64::from(f32::EPSILON);
                    assert!(
                        (f64::from(g) - w).abs() <= tol,
                        "{path}: {d:?} a_t={a_t} b_t={b_t} at {i}: {g} vs {w}"
                    );
                    // The bf16 result is the f32 accumulator rounded to nearest even.
                    assert_eq!(rounded[i], bf16::from_f32(g), "{path}: {d:?} at {i}");
                }
            }
            // f32 operands (autocast's), rounded as they are packed: the values are bf16-exact,
            // so the product is the bf16 operands' bit for bit, through the f32 packing paths.
            let (fa, fb): (Vec<f32>, Vec<f32>) = (
                va.iter().map(|v| v.to_f32()).collect(),
                vb.iter().map(|v| v.to_f32()).collect(),
            );
            let (a32, b32) = (
                Strided {
                    data: &fa[..],
                    offsets: a.offsets.clone(),
                    rs: a.rs,
                    cs: a.cs,
                },
                Strided {
                    data: &fb[..],
                    offsets: b.offsets.clone(),
                    rs: b.rs,
                    cs: b.cs,
                },
            );
            let (mut from_bf16, mut from_f32) = (vec![0f32; want.len()], vec![0f32; want.len()]);
            vector_matmul(&a, &b, d, &mut from_bf16, parallel(d));
            vector_matmul(&a32, &b32, d, &mut from_f32, parallel(d));
            assert!(
                from_bf16
                    .iter()
                    .zip(&from_f32)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "f32 operands: {d:?} a_t={a_t} b_t={b_t}"
            );
        }
    }
}
