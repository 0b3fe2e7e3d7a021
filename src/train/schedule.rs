//! Learning-rate schedules as transformers defines them: linear warmup from 0, then constant, linear
//! decay to 0, or cosine decay to 0 (`get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup` with 0.5 cycles).

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

impl Schedule {
    pub fn parse(name: &str) -> Option<Schedule> {
        match name {
            "constant" => Some(Schedule::Constant),
            "linear" => Some(Schedule::Linear),
            "cosine" => Some(Schedule::Cosine),
            _ => None,
        }
    }

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
        // transformers: lr_lambda(step) for 10 steps, 2 warmup.
        let linear: Vec<f64> = (0..10).map(|s| Schedule::Linear.factor(s, 2, 10)).collect();
        assert_eq!(linear[..3], [0.0, 0.5, 1.0]);
        assert!((linear[6] - 0.5).abs() < 1e-12);
        let cosine: Vec<f64> = (0..10).map(|s| Schedule::Cosine.factor(s, 2, 10)).collect();
        assert!(
            (cosine[6] - 0.5).abs() < 1e-12,
            "half way through the decay: {}",
            cosine[6]
        );
        assert!((cosine[4] - (0.5 * (1.0 + (std::f64::consts::PI * 0.25).cos()))).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(9, 2, 10), 1.0);
        assert_eq!(warmup_steps(0, 0.1, 95), 10);
        assert_eq!(warmup_steps(3, 0.1, 95), 3);
    }
}
