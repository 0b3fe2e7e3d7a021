//! x [m, k] · wᵀ (w [n, k], row-major) for a few rows of x, as generation's decode steps multiply:
//! one row per sequence against every weight. gemm packs the whole of wᵀ into panels for each
//! product, one scalar copy per element, which for a few rows costs several times the product
//! itself (71% of `ptl generate`'s samples at 16 rows on the bench model). Here each row of w is
//! read once, where it lies, and dotted with every row of x.
//!
//! Only inside [`Decoding`]: the products are plain values, with no backward, and training's
//! numerics stay gemm's.

use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

/// The most rows of x a product may have to take this path.
pub const MAX_ROWS: usize = 32;

/// Weight rows per parallel task.
const BLOCK: usize = 64;

thread_local! {
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While it lives, products of at most [`MAX_ROWS`] rows built on this thread go through
/// [`matmul_t`]; nothing built meanwhile can be differentiated through them.
pub struct Decoding {
    before: bool,
}

impl Decoding {
    pub fn start() -> Decoding {
        Decoding {
            before: DECODING.with(|d| d.replace(true)),
        }
    }
}

impl Drop for Decoding {
    fn drop(&mut self) {
        DECODING.with(|d| d.set(self.before));
    }
}

/// Whether a product of x [.., k] (its rows flattened) would take this path now (the weight
/// stored row-major in f32 as well).
pub fn applies(x: &Tensor) -> bool {
    let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
    DECODING.with(|d| d.get())
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && !super::matmul::kernel_for(DType::F32)
        && rows <= MAX_ROWS
}

/// x · wᵀ this way when [`Decoding`] is on, both are f32 on the CPU, x has at most [`MAX_ROWS`]
/// rows and w is stored row-major; `None` otherwise (the caller multiplies as usual).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let eligible =
        applies(x) && w.device().is_cpu() && w.dtype() == DType::F32 && w.is_contiguous();
    let ((m, k), (n, wk)) = (x.dims2()?, w.dims2()?);
    if !eligible || k != wk {
        return Ok(None);
    }
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    // The weight where it lies (a copy would double what a decode step reads).
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Ok(None);
    };
    let ws = &data[layout.start_offset()..][..n * k];
    let y = product(&xs, ws, m, k, n);
    drop(storage);
    Ok(Some(Tensor::from_vec(y, (m, n), x.device())?))
}

/// x [m, k] · wᵀ (w [n, k]) as [m, n], both row-major.
fn product(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    if m == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    // Worked out column by column ([n, m]: each task owns whole weight rows), then turned.
    let mut yt = vec![0f32; n * m];
    let rows: Vec<&[f32]> = x.chunks_exact(k).take(m).collect();
    let block = |(b, out): (usize, &mut [f32])| {
        for (j, col) in out.chunks_mut(m).enumerate() {
            let wj = &w[(b * BLOCK + j) * k..][..k];
            for (i0, dst) in (0..m).step_by(4).zip(col.chunks_mut(4)) {
                let four: [&[f32]; 4] = std::array::from_fn(|r| rows[(i0 + r).min(m - 1)]);
                let sums = dots4(wj, four);
                dst.copy_from_slice(&sums[..dst.len()]);
            }
        }
    };
    if n * k >= 1 << 15 {
        yt.par_chunks_mut(BLOCK * m).enumerate().for_each(block);
    } else {
        yt.chunks_mut(BLOCK * m).enumerate().for_each(block);
    }
    let mut y = vec![0f32; m * n];
    for (j, col) in yt.chunks_exact(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            y[i * n + j] = *v;
        }
    }
    y
}

/// w · x_r for four rows of x at once, in plain arithmetic (CPUs without AVX2 and FMA).
fn dots4_plain(w: &[f32], xs: [&[f32]; 4]) -> [f32; 4] {
    std::array::from_fn(|r| w.iter().zip(xs[r]).map(|(a, b)| a * b).sum())
}

/// w · x_r for four rows of x at once, each chunk of w loaded once for the four; every row of `xs`
/// at least as long as w.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots4_avx512(w: &[f32], xs: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let k = w.len();
    let whole = k - k % 16;
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut s = 0;
    while s < whole {
        let wv = _mm512_loadu_ps(w.as_ptr().add(s));
        for (a, x) in acc.iter_mut().zip(xs) {
            *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x.as_ptr().add(s)), *a);
        }
        s += 16;
    }
    std::array::from_fn(|r| {
        let tail: f32 = (whole..k).map(|j| w[j] * xs[r][j]).sum();
        _mm512_reduce_add_ps(acc[r]) + tail
    })
}

/// [`dots4_avx512`] in AVX2 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots4_avx2(w: &[f32], xs: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let k = w.len();
    let whole = k - k % 8;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut s = 0;
    while s < whole {
        let wv = _mm256_loadu_ps(w.as_ptr().add(s));
        for (a, x) in acc.iter_mut().zip(xs) {
            *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(s)), *a);
        }
        s += 8;
    }
    std::array::from_fn(|r| {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]);
        let tail: f32 = (whole..k).map(|j| w[j] * xs[r][j]).sum();
        lanes.iter().sum::<f32>() + tail
    })
}

/// w · x_r for four rows, in AVX-512 or AVX2 with FMA where the CPU has them.
fn dots4(w: &[f32], xs: [&[f32]; 4]) -> [f32; 4] {
    assert!(
        xs.iter().all(|x| x.len() >= w.len()),
        "rows shorter than the weight's"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; every row of xs is at least as long as w.
            return unsafe { dots4_avx512(w, xs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; every row of xs is at least as long as w.
            return unsafe { dots4_avx2(w, xs) };
        }
    }
    dots4_plain(w, xs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_the_matmul_within_rounding_and_only_while_decoding() {
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1, 1, 1),
            (1, 17, 3),
            (3, 64, 130),
            (4, 100, 7),
            (5, 512, 200),
            (16, 33, 65),
            (32, 48, 129),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            assert!(matmul_t(&x, &w).unwrap().is_none(), "not decoding");
            let want: Vec<f32> = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got: Vec<f32> = {
                let _on = Decoding::start();
                matmul_t(&x, &w)
                    .unwrap()
                    .expect("decoding, few rows")
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            // Sums of k products of unit normals: the two summation orders differ by a few ulps
            // of the magnitude √k.
            let bound = 4e-6 * (k as f32).sqrt();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= bound, "{m}×{k}×{n}: {a} vs {b}");
            }
        }
        let _on = Decoding::start();
        let x = Tensor::randn(0f32, 1.0, (MAX_ROWS + 1, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 8), &dev).unwrap();
        assert!(matmul_t(&x, &w).unwrap().is_none(), "too many rows");
    }

    #[test]
    fn every_build_of_the_dot_products_agrees() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for k in [0, 1, 7, 8, 15, 16, 17, 100, 512] {
            let w: Vec<f32> = (0..k).map(|_| next()).collect();
            let xs: Vec<Vec<f32>> = (0..4).map(|_| (0..k).map(|_| next()).collect()).collect();
            let four: [&[f32]; 4] = std::array::from_fn(|r| xs[r].as_slice());
            let plain = dots4_plain(&w, four);
            let mut builds = vec![dots4(&w, four)];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA; the rows are as long as w.
                builds.push(unsafe { dots4_avx2(&w, four) });
            }
            for got in builds {
                for (a, b) in got.iter().zip(plain) {
                    assert!((a - b).abs() <= 1e-5, "k {k}: {a} vs {b}");
                }
            }
        }
    }
}
