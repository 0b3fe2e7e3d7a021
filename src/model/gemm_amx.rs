//! The bf16 product on CPUs with AMX (Intel Xeon from Sapphire Rapids on): `tdpbf16ps` multiplies a
//! 16 × 32 bf16 tile of A by a 32 × 16 tile of B into a 16 × 16 f32 tile, summing pairs of products
//! into f32 as `vdpbf16ps` does, at up to eight times the rate of the f32 FMA units (measured here:
//! 1.99 TFLOP/s per core from registers).
//!
//! B is packed as `gemm_bf16` packs it (each column's row pairs side by side, panels of 64 columns),
//! which is the pair-interleaved layout AMX reads; the depth is padded to whole tiles (16 pairs) with
//! zeros. A is packed row-major with the same padded depth, rows padded to 32. The micro-kernel
//! holds a 32 × 32 block of the result in four accumulator tiles over the whole depth, loading two
//! tiles of A and two of B per 16 pairs, then stores it once.

use super::gemm_bf16::{
    for_each_b_block, pack_chunks, Dims, Element, Output, SharedOut, Strided, NR,
};

/// Rows of one tile (of A and of the result), and row pairs of one tile of B.
const TILE: usize = 16;
/// Rows of the result one micro-kernel call holds (two tiles).
const MR: usize = 2 * TILE;
/// Bytes of packed B one column block holds (within L2).
const B_BLOCK_BYTES: usize = 512 * 1024;

/// Whether this CPU has AMX-BF16 and the kernel has let this process use the tile registers.
pub fn available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| super::gemm_bf16::available() && cpu_has_amx() && request_tiles())
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx() -> bool {
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    let id = std::arch::x86_64::__cpuid_count(7, 0);
    id.edx & (1 << 22) != 0 && id.edx & (1 << 24) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx() -> bool {
    false
}

/// Linux hands out the 8 KiB of tile state per process on request (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`); without it the first tile instruction faults.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tiles() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let result: i64;
    // SAFETY: arch_prctl with these arguments only changes this process's permitted state.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => result,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tiles() -> bool {
    false
}

/// out [batches, m, n] (row-major, not empty) = A · B for each batch, on rayon's threads when
/// `parallel` (`gemm_bf16::matmul` checks the shape and decides). Panics unless [`available`].
pub(super) fn matmul<A: Element, B: Element, T: Output>(
    a: &Strided<A>,
    b: &Strided<B>,
    d: Dims,
    out: &mut [T],
    parallel: bool,
) {
    assert!(available(), "bf16 AMX matmul without AMX");
    // Pairs of the depth, padded to whole tiles (zero pairs add nothing).
    let kp = d.k.div_ceil(2).div_ceil(TILE).max(1) * TILE;
    let rows = d.m.div_ceil(MR) * MR;

    let mut packed_a = vec![0u32; d.batches * rows * kp];
    pack_chunks(&mut packed_a, kp, parallel, |row, dst| {
        pack_a_row(a, row / rows, row % rows, d, dst)
    });
    let out_ptr = SharedOut(out.as_mut_ptr());
    for_each_b_block(b, d, kp, B_BLOCK_BYTES, parallel, |blk, packed_b| {
        let (batch, j0, cols) = (blk.batch, blk.j0, blk.cols);
        let a_batch = &packed_a[batch * rows * kp..][..rows * kp];
        // SAFETY: available() was asserted, so this thread may use the tile registers.
        unsafe { configure_tiles() };
        let mut acc = [0f32; 4 * TILE * TILE];
        for i0 in (0..d.m).step_by(MR) {
            for c0 in (0..cols).step_by(2 * TILE) {
                let (panel, group) = (c0 / NR, (c0 % NR) / TILE);
                let b_panel = &packed_b[panel * kp * 2 * NR..][..kp * 2 * NR];
                // SAFETY: the A rows i0 .. i0 + 32 and B groups `group`, `group + 1` hold kp pairs.
                unsafe { block_32x32(kp, &a_batch[i0 * kp..], b_panel, group, &mut acc) };
                let base = batch * d.m * d.n + j0 + c0;
                // SAFETY: rows < m and columns < cols bound every write, inside `out`; no other
                // block writes these columns of this batch.
                unsafe {
                    store(
                        &acc,
                        out_ptr.at(base + i0 * d.n),
                        d.n,
                        (d.m - i0).min(MR),
                        (cols - c0).min(2 * TILE),
                    );
                }
            }
        }
        // SAFETY: the tiles are this thread's; releasing them ends their use.
        unsafe { release_tiles() };
    });
}

/// Row `i` of batch `batch` of A as kp words of two bf16 (low half the even column), zeros past the
/// matrix.
fn pack_a_row<A: Element>(a: &Strided<A>, batch: usize, i: usize, d: Dims, dst: &mut [u32]) {
    if i >= d.m {
        return;
    }
    if a.cs == 1 && d.k > 0 {
        // A contiguous row: its bf16 in order are the words' halves (low half first).
        let src = &a.data[a.offsets[batch] + i * a.rs..][..d.k];
        // SAFETY: u16 needs less alignment than u32, and the view covers dst's own memory.
        let halves =
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u16, dst.len() * 2) };
        A::bits_into(src, &mut halves[..d.k]);
        return;
    }
    for (p, word) in dst.iter_mut().enumerate().take(d.k.div_ceil(2)) {
        let lo = a.at(batch, i, 2 * p);
        let hi = if 2 * p + 1 < d.k {
            a.at(batch, i, 2 * p + 1)
        } else {
            0
        };
        *word = u32::from(lo) | u32::from(hi) << 16;
    }
}

/// Palette 1 with eight tiles of 16 rows × 64 bytes: 0–3 accumulators, 4–5 A, 6–7 B.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// SAFETY: the CPU has AMX and this process was granted the tile state ([`available`]).
unsafe fn configure_tiles() {
    let mut config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        config.colsb[t] = 64;
        config.rows[t] = TILE as u8;
    }
    // SAFETY: the configuration is valid for palette 1 (the caller's CPU has it).
    unsafe {
        std::arch::asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack));
    }
}

/// SAFETY: as [`configure_tiles`].
unsafe fn release_tiles() {
    unsafe { std::arch::asm!("tilerelease", options(nostack)) };
}

/// acc = A rows 0..32 (`a`: row-major, kp words a row) · B columns `group`·16 .. +32 of one packed
/// panel (`b`: kp pairs of 64 interleaved columns), as four 16 × 16 tiles (row-major in `acc`:
/// [top-left, top-right, bottom-left, bottom-right]).
///
/// SAFETY: tiles configured ([`configure_tiles`]); `a` holds 32 · kp words, `b` kp · 128 bf16,
/// `group + 1` < 4, kp a multiple of 16.
unsafe fn block_32x32(
    kp: usize,
    a: &[u32],
    b: &[u16],
    group: usize,
    acc: &mut [f32; 4 * TILE * TILE],
) {
    let a_stride = kp * 4;
    let b_stride = 2 * NR * 2;
    let a0 = a.as_ptr() as *const u8;
    let b0 = b.as_ptr() as *const u8;
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
        for p0 in (0..kp).step_by(TILE) {
            let top = a0.add(p0 * 4);
            let bottom = a0.add(TILE * a_stride + p0 * 4);
            let left = b0.add(p0 * b_stride + group * 64);
            let right = left.add(64);
            std::arch::asm!(
                "tileloadd tmm4, [{top} + {sa}*1]",
                "tileloadd tmm5, [{bottom} + {sa}*1]",
                "tileloadd tmm6, [{left} + {sb}*1]",
                "tileloadd tmm7, [{right} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                top = in(reg) top,
                bottom = in(reg) bottom,
                left = in(reg) left,
                right = in(reg) right,
                sa = in(reg) a_stride,
                sb = in(reg) b_stride,
                options(nostack),
            );
        }
        let c = acc.as_mut_ptr() as *mut u8;
        let tile_bytes = TILE * TILE * 4;
        std::arch::asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c,
            c1 = in(reg) c.add(tile_bytes),
            c2 = in(reg) c.add(2 * tile_bytes),
            c3 = in(reg) c.add(3 * tile_bytes),
            s = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// Writes `rows` × `cols` (at most 32 × 32) of the four tiles to `dst` (row stride `stride`),
/// rounded to bf16 (nearest even) unless `T` is f32, 16 columns at a time.
///
/// SAFETY: the CPU has AVX512-BF16 (every AMX-BF16 CPU does; [`available`] checks it);
/// `dst + (rows - 1) · stride + cols` is writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn store<T: Output>(
    acc: &[f32; 4 * TILE * TILE],
    dst: *mut T,
    stride: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    for r in 0..rows {
        for half in 0..2 {
            let col = half * TILE;
            if col >= cols {
                break;
            }
            let left = cols - col;
            let mask: u16 = if left >= TILE {
                u16::MAX
            } else {
                (1u16 << left) - 1
            };
            let tile = (r / TILE) * 2 + half;
            // SAFETY: the tile's row r % 16 is 16 f32 inside `acc`; the masked lanes are columns
            // col .. cols of row r, inside `dst` (the caller's bounds).
            unsafe {
                let v = _mm512_loadu_ps(acc.as_ptr().add(tile * TILE * TILE + (r % TILE) * TILE));
                let at = dst.add(r * stride + col);
                if T::F32 {
                    _mm512_mask_storeu_ps(at as *mut f32, mask, v);
                } else {
                    let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                    _mm256_mask_storeu_epi16(at as *mut i16, mask, h);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn store<T: Output>(_: &[f32; 4 * TILE * TILE], _: *mut T, _: usize, _: usize, _: usize) {
    unreachable!("available() is false off x86-64")
}
