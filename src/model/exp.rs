//! exp over rows of f32 in SIMD lanes, for the fused kernels (the attention's softmax, the loss's
//! cross-entropy, SwiGLU's sigmoid): Cephes' expf (Cody–Waite reduction by ln 2, a degree-6 polynomial;
//! within 1 ulp of exp from −87.33 to 88.37, 0 below, ∞ above, NaN kept; the softmax kernels take
//! x − max(x) ≤ 0, and for SwiGLU's exp(−g) an ∞ from 88.37 on, where exp itself overflows at
//! 88.72, gives the same sigmoid of 0). glibc's expf is scalar and the f64 exp the fused softmax
//! used before is slower still. The lanes are written out, not left to the compiler's choice, so
//! every CPU gives the same bits: the AVX-512 and AVX2 builds below compile the same scalar
//! operations (no fused multiply-adds).

/// Below this exp(x) is not a normal f32 (≈ −87.34): the result is 0.
const LOWEST: f32 = -87.336_55;
/// Above this 2ⁿ would leave f32's exponents (ln 2^127.49): the result is ∞ (exp itself overflows
/// a little higher, at 88.72).
const HIGHEST: f32 = 88.37;
/// 1.5 · 2²³: added to a float below 2²² it rounds it to an integer in the low mantissa bits.
const ROUNDER: f32 = 12_582_912.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts (the first exact in few bits), for the reduction x − n·ln 2.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' expf polynomial: e^r ≈ 1 + r + r²·P(r) on |r| ≤ ln 2 / 2.
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// The lanes each chunk computes side by side (one AVX-512 register of f32).
const LANES: usize = 16;

#[inline(always)]
fn exp1(x: f32) -> f32 {
    let t = x * LOG2E + ROUNDER;
    let n = t - ROUNDER;
    // n sits in t's low mantissa bits (two's complement for negative n): 2ⁿ is (n + 127) << 23.
    let scale = f32::from_bits(
        (t.to_bits()
            .wrapping_sub(ROUNDER.to_bits())
            .wrapping_add(127))
            << 23,
    );
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + *c;
    }
    let e = (p * r * r + r + 1.0) * scale;
    if x < LOWEST {
        0.0
    } else if x > HIGHEST {
        f32::INFINITY
    } else {
        e
    }
}

/// buf[j] ← exp(buf[j] − shift); with `SUM`, returns their sum in f64 (`LANES` partial sums, then
/// those in order: a row of 150k values summed in f32 lanes drifts by a few 1e-6 of the sum).
#[inline(always)]
fn exp_lanes<const SUM: bool>(buf: &mut [f32], shift: f32) -> f64 {
    let mut sums = [0f64; LANES];
    let mut chunks = buf.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (v, s) in chunk.iter_mut().zip(&mut sums) {
            *v = exp1(*v - shift);
            if SUM {
                *s += f64::from(*v);
            }
        }
    }
    for (v, s) in chunks.into_remainder().iter_mut().zip(&mut sums) {
        *v = exp1(*v - shift);
        if SUM {
            *s += f64::from(*v);
        }
    }
    sums.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_avx512<const SUM: bool>(buf: &mut [f32], shift: f32) -> f64 {
    exp_lanes::<SUM>(buf, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_avx2<const SUM: bool>(buf: &mut [f32], shift: f32) -> f64 {
    exp_lanes::<SUM>(buf, shift)
}

/// [`exp_lanes`] in AVX-512 or AVX2 where the CPU has them: the same bits on every CPU.
fn exp_dispatch<const SUM: bool>(buf: &mut [f32], shift: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { exp_avx512::<SUM>(buf, shift) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { exp_avx2::<SUM>(buf, shift) };
        }
    }
    exp_lanes::<SUM>(buf, shift)
}

/// buf[j] ← exp(buf[j] − shift), returning Σ_j of the results (summed in f64).
pub fn exp_sum(buf: &mut [f32], shift: f32) -> f64 {
    exp_dispatch::<true>(buf, shift)
}

/// buf[j] ← exp(buf[j]).
pub fn exp(buf: &mut [f32]) {
    exp_dispatch::<false>(buf, 0.0);
}

/// The largest element (−∞ for an empty row; NaN when one is NaN, as the composed max).
pub fn max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut nan = false;
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            nan |= v.is_nan();
            *l = if v > *l { v } else { *l };
        }
    }
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        nan |= v.is_nan();
        *l = if v > *l { v } else { *l };
    }
    if nan {
        return f32::NAN;
    }
    lanes.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    /// Against f64's exp from −87.3 to 88.3 (where exp is a normal f32), at 1 ulp (0.96 measured), and at the
    /// edges: 0 below, ∞ above, NaN kept; and the same bits from every build the CPU can run.
    #[test]
    fn within_two_ulp_of_exp_and_the_same_on_every_build() {
        let mut xs: Vec<f32> = (0..200_001)
            .map(|i| -87.3 + (88.3 + 87.3) * i as f32 / 200_000.0)
            .collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5]);
        let mut ys = xs.clone();
        let sum = super::exp_sum(&mut ys, 0.0);
        let mut worst = 0f64;
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = f64::from(x).exp();
            let ulp =
                f64::from(f32::from_bits((want as f32).to_bits() + 1)) - f64::from(want as f32);
            worst = worst.max((f64::from(y) - want).abs() / ulp);
        }
        assert!(worst <= 1.0, "worst error {worst} ulp");
        let mut lanes = xs.clone();
        assert_eq!(
            super::exp_lanes::<true>(&mut lanes, 0.0).to_bits(),
            sum.to_bits()
        );
        assert!(lanes
            .iter()
            .zip(&ys)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        let mut plain = xs.clone();
        super::exp(&mut plain);
        assert!(plain
            .iter()
            .zip(&ys)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        let mut edges = vec![
            -88.0,
            -100.0,
            f32::NEG_INFINITY,
            89.0,
            f32::INFINITY,
            f32::NAN,
        ];
        super::exp_sum(&mut edges, 0.0);
        assert_eq!(&edges[..5], &[0.0, 0.0, 0.0, f32::INFINITY, f32::INFINITY]);
        assert!(edges[5].is_nan());
        // The shift is subtracted first: exp(x − x) = 1.
        let mut row = vec![3.25f32; 37];
        assert_eq!(super::exp_sum(&mut row, 3.25), 37.0);
    }

    #[test]
    fn max_is_the_largest_and_keeps_nan() {
        let row: Vec<f32> = (0..41).map(|i| ((i * 7) % 41) as f32 - 20.0).collect();
        assert_eq!(super::max(&row), 20.0);
        assert_eq!(super::max(&[]), f32::NEG_INFINITY);
        assert!(super::max(&[1.0, f32::NAN, 2.0]).is_nan());
    }
}
