//! Weighted merges of models of one architecture, tensor by tensor, as mergekit computes them:
//! `linear` (the weighted mean), `slerp` (spherical interpolation of two models, linear when they are
//! nearly parallel), `ties` (task vectors against a base, trimmed to their largest `density` share,
//! a sign elected per weight by the weighted sum, and the agreeing ones averaged).

/// Σ wᵢ xᵢ / Σ wᵢ.
pub fn linear(xs: &[&[f32]], weights: &[f64]) -> Vec<f32> {
    let total: f64 = weights.iter().sum();
    (0..xs[0].len())
        .map(|j| {
            (xs.iter()
                .zip(weights)
                .map(|(x, w)| x[j] as f64 * w)
                .sum::<f64>()
                / total) as f32
        })
        .collect()
}

/// mergekit's threshold above which two tensors count as parallel (then it interpolates linearly).
const DOT_THRESHOLD: f64 = 0.9995;

/// Spherical interpolation from `a` (t = 0) to `b` (t = 1) along the great circle of their
/// directions, applied to the tensors as they are (mergekit's `slerp`).
pub fn slerp(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    let norm = |x: &[f32]| {
        x.iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12)
    };
    let (na, nb) = (norm(a), norm(b));
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 / na) * (*y as f64 / nb))
        .sum();
    if dot.abs() > DOT_THRESHOLD {
        return a
            .iter()
            .zip(b)
            .map(|(x, y)| ((1.0 - t) * *x as f64 + t * *y as f64) as f32)
            .collect();
    }
    let theta = dot.acos();
    let (s0, s1) = (
        ((1.0 - t) * theta).sin() / theta.sin(),
        (t * theta).sin() / theta.sin(),
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| (s0 * *x as f64 + s1 * *y as f64) as f32)
        .collect()
}

/// `delta` with all but its ⌊density·n⌋ largest-magnitude entries set to 0 (mergekit's `magnitude`).
fn trim(delta: &[f64], density: f64) -> Vec<f64> {
    if density >= 1.0 {
        return delta.to_vec();
    }
    let keep = (density * delta.len() as f64) as usize;
    let mut order: Vec<usize> = (0..delta.len()).collect();
    order.sort_by(|&i, &j| delta[j].abs().total_cmp(&delta[i].abs()));
    let mut out = vec![0.0; delta.len()];
    for &i in &order[..keep] {
        out[i] = delta[i];
    }
    out
}

/// TIES: base + the disjoint weighted mean of the trimmed task vectors (xᵢ − base) whose sign agrees
/// with the sign of their weighted sum (a sum of 0 elects +, as mergekit).
pub fn ties(base: &[f32], xs: &[&[f32]], weights: &[f64], density: f64) -> Vec<f32> {
    let deltas: Vec<Vec<f64>> = xs
        .iter()
        .map(|x| {
            let d: Vec<f64> = x
                .iter()
                .zip(base)
                .map(|(v, b)| *v as f64 - *b as f64)
                .collect();
            trim(&d, density)
        })
        .collect();
    (0..base.len())
        .map(|j| {
            let sum_all: f64 = deltas.iter().zip(weights).map(|(d, w)| d[j] * w).sum();
            let elected = if sum_all >= 0.0 { 1.0 } else { -1.0 };
            let (mut sum, mut weight) = (0.0, 0.0);
            for (d, w) in deltas.iter().zip(weights) {
                if d[j] != 0.0 && d[j].signum() == elected {
                    sum += d[j] * w;
                    weight += w;
                }
            }
            let merged = if weight > 0.0 { sum / weight } else { 0.0 };
            (base[j] as f64 + merged) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_of_a_model_with_itself_are_the_model() {
        let a = [0.5f32, -1.0, 2.0, 0.0];
        assert_eq!(linear(&[&a, &a], &[1.0, 3.0]), a);
        assert_eq!(slerp(&a, &a, 0.3), a);
        assert_eq!(ties(&a, &[&a, &a], &[1.0, 1.0], 0.5), a);
    }

    #[test]
    fn slerp_ends_at_its_inputs_and_keeps_the_norm_of_orthogonal_unit_vectors() {
        let (a, b) = ([1.0f32, 0.0], [0.0f32, 1.0]);
        assert_eq!(slerp(&a, &b, 0.0), a);
        let end = slerp(&a, &b, 1.0);
        assert!(
            (end[0]).abs() < 1e-7 && (end[1] - 1.0).abs() < 1e-7,
            "{end:?}"
        );
        let mid = slerp(&a, &b, 0.5);
        let n = (mid[0].powi(2) + mid[1].powi(2)).sqrt();
        assert!((n - 1.0).abs() < 1e-6, "{mid:?}");
    }

    #[test]
    fn ties_trims_elects_and_averages_the_agreeing() {
        let base = [0.0f32; 4];
        let x = [1.0f32, -2.0, 0.1, 3.0];
        let y = [1.0f32, 2.0, 0.2, -1.0];
        // density 0.5 keeps 2 of 4: x's {-2, 3} and y's {2, and one of the 1s: the first, position 0}.
        // Position 0: only y (1). Position 1: −2 + 2 = 0 elects +, y agrees: 2. Position 3: 3 (x).
        let m = ties(&base, &[&x, &y], &[1.0, 1.0], 0.5);
        assert_eq!(m, [1.0, 2.0, 0.0, 3.0]);
    }
}
