//! Learning-rate schedules as transformers defines them: linear warmup from 0, then constant, linear
//! decay to 0, or cosine decay to 0 (`get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup` with 0.5 cycles).

#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

impl Schedule {
    /// The multiplier of the peak learning rate at optimizer step `step` (0-based) of `total`.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }
}

/// Warmup steps from `warmup_steps`, or else `ceil(warmup_ratio · total)` as transformers computes it.
pub fn warmup_steps(warmup_steps: usize, warmup_ratio: f64, total: usize) -> usize {
    if warmup_steps > 0 {
        warmup_steps
    } else {
        (warmup_ratio * total as f64).ceil() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // transformers' get_linear_schedule_with_warmup / get_cosine_schedule_with_warmup lr_lambda
        // for 10 steps with 2 of warmup, written out (not recomputed with this module's formula).
        let linear = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        let cosine = [
            0.0,
            0.5,
            1.0,
            0.9619397662556434,
            0.8535533905932737,
            0.6913417161825449,
            0.5,
            0.30865828381745514,
            0.14644660940672627,
            0.03806023374435663,
        ];
        for step in 0..10 {
            let got = Schedule::Linear.factor(step, 2, 10);
            assert!((got - linear[step]).abs() < 1e-15, "linear {step}: {got}");
            let got = Schedule::Cosine.factor(step, 2, 10);
            assert!((got - cosine[step]).abs() < 1e-15, "cosine {step}: {got}");
        }
        assert_eq!(Schedule::Constant.factor(9, 2, 10), 1.0);
        assert_eq!(warmup_steps(0, 0.1, 95), 10);
        assert_eq!(warmup_steps(3, 0.1, 95), 3);
    }
}
