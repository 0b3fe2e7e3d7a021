//! Row reductions for the fused ops, in f64 over eight independent partial sums: a single running
//! sum is one long chain of dependent additions (the CPU waits on each), while eight chains fill
//! the vector units. The order is written out, not left to the compiler, so every CPU gives the
//! same bits (Rust never fuses a multiply and an add on its own).

use candle_core::WithDType;

/// The partial sums each reduction keeps side by side.
const LANES: usize = 8;

/// Σ terms over `n` positions, term j in lane j mod `LANES`, the lanes summed in order at the end.
#[inline(always)]
fn lanes(n: usize, term: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let whole = n - n % LANES;
    for start in (0..whole).step_by(LANES) {
        for (lane, a) in acc.iter_mut().enumerate() {
            *a += term(start + lane);
        }
    }
    for (a, j) in acc.iter_mut().zip(whole..n) {
        *a += term(j);
    }
    acc.iter().sum()
}

/// Σ a⊙b in f64.
pub fn dot<T: WithDType>(a: &[T], b: &[T]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    lanes(n, |j| a[j].to_f64() * b[j].to_f64())
}

/// Σ a⊙b⊙c in f64.
pub fn dot3<T: WithDType>(a: &[T], b: &[T], c: &[T]) -> f64 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    lanes(n, |j| a[j].to_f64() * b[j].to_f64() * c[j].to_f64())
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
    fn lane_sums_stay_within_rounding_of_a_sequential_sum() {
        let a: Vec<f64> = (0..4099).map(|j| ((j * 37 % 101) as f64).sin()).collect();
        let b: Vec<f64> = (0..4099).map(|j| ((j * 53 % 97) as f64).cos()).collect();
        let sequential: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let scale: f64 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
        assert!((dot(&a, &b) - sequential).abs() <= 4099.0 * f64::EPSILON * scale);
    }
}
