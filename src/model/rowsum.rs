//! Row reductions for the fused ops, in f64 over eight independent partial sums: a single running
//! sum is one long chain of dependent additions (the CPU waits on each), while eight chains fill
//! the vector units. The order is written out, not left to the compiler, so every CPU gives the
//! same bits (Rust never fuses a multiply and an add on its own).

use candle_core::WithDType;

/// The partial sums each reduction keeps side by side.
const LANES: usize = 8;

/// Σ_j Π_r rows[r][j] over the rows' common length, term j in lane j mod `LANES`, the lanes
/// summed in order at the end; each product formed left to right (rows[0] · rows[1] · …).
#[inline(always)]
fn lanes<T: WithDType, const N: usize>(rows: [&[T]; N]) -> f64 {
    let n = rows.iter().map(|r| r.len()).min().unwrap_or(0);
    let term = |j: usize| {
        let mut p = rows[0][j].to_f64();
        for r in &rows[1..] {
            p *= r[j].to_f64();
        }
        p
    };
    let mut acc = [0f64; LANES];
    let whole = n - n % LANES;
    for start in (0..whole).step_by(LANES) {
        let chunks: [&[T; LANES]; N] = std::array::from_fn(|r| {
            rows[r][start..start + LANES]
                .try_into()
                .expect("a whole chunk")
        });
        for (lane, a) in acc.iter_mut().enumerate() {
            let mut p = chunks[0][lane].to_f64();
            for c in &chunks[1..] {
                p *= c[lane].to_f64();
            }
            *a += p;
        }
    }
    for (a, j) in acc.iter_mut().zip(whole..n) {
        *a += term(j);
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn lanes_avx512<T: WithDType, const N: usize>(rows: [&[T]; N]) -> f64 {
    lanes(rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lanes_avx2<T: WithDType, const N: usize>(rows: [&[T]; N]) -> f64 {
    lanes(rows)
}

/// [`lanes`] in AVX-512 or AVX2 where the CPU has them: the same operations, so the same bits.
fn reduce<T: WithDType, const N: usize>(rows: [&[T]; N]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { lanes_avx512(rows) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { lanes_avx2(rows) };
        }
    }
    lanes(rows)
}

/// Σ a⊙b in f64.
pub fn dot<T: WithDType>(a: &[T], b: &[T]) -> f64 {
    reduce([a, b])
}

/// Σ a⊙b⊙c in f64.
pub fn dot3<T: WithDType>(a: &[T], b: &[T], c: &[T]) -> f64 {
    reduce([a, b, c])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_equal_the_exact_sums_of_small_integers() {
        // Integers multiply and add exactly in f64: any summation order gives the one true value.
        for n in [0, 1, 7, 8, 9, 63, 64, 65, 1000] {
            let a: Vec<f32> = (0..n).map(|j| (j % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..n).map(|j| (j % 7) as f32 + 1.0).collect();
            let c: Vec<f32> = (0..n).map(|j| (j % 5) as f32 - 2.0).collect();
            let exact2: f64 = (0..n).map(|j| f64::from(a[j] * b[j])).sum();
            let exact3: f64 = (0..n).map(|j| f64::from(a[j] * b[j] * c[j])).sum();
            assert_eq!(dot(&a, &b), exact2, "n = {n}");
            assert_eq!(dot3(&a, &b, &c), exact3, "n = {n}");
        }
    }

    #[test]
    fn lane_sums_stay_within_rounding_of_a_sequential_sum_on_every_build() {
        let a: Vec<f64> = (0..4099).map(|j| ((j * 37 % 101) as f64).sin()).collect();
        let b: Vec<f64> = (0..4099).map(|j| ((j * 53 % 97) as f64).cos()).collect();
        let sequential: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let scale: f64 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
        assert!((dot(&a, &b) - sequential).abs() <= 4099.0 * f64::EPSILON * scale);
        // The AVX-512 or AVX2 build gives the plain build's bits.
        assert_eq!(lanes([&a[..], &b[..]]).to_bits(), dot(&a, &b).to_bits());
        assert_eq!(
            lanes([&a[..], &b[..], &a[..]]).to_bits(),
            dot3(&a, &b, &a).to_bits()
        );
    }
}
