//! Preference objectives on (prompt, chosen, rejected) pairs. Chosen and rejected of a micro-batch go
//! through the model in one forward (TRL's concatenated forward: rows [chosen…; rejected…], right
//! padded); a completion's log-probability is the sum over its tokens only. DPO follows TRL 1.16's
//! DPOTrainer, SimPO its CPOTrainer with `loss_type = "simpo"`, ORPO its ORPOTrainer
//! (../shared/reference/losses-and-formats.md §1–3).

use super::logps::{model_surrogate, model_token_logps};
use super::objective::{metrics_over, MicroLoss, Objective};
use super::supervised::{batch, Sequence};
use crate::model::decoder::Decoder;

/// One preference row, encoded: the prompt and the two completions (each ends as TRL's does).
pub struct Pair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl Pair {
    /// The two sequences, prompt + completion, the completion's tokens marked.
    fn sequences(&self) -> [Sequence; 2] {
        [&self.chosen, &self.rejected].map(|c| {
            let mut ids = self.prompt.clone();
            ids.extend_from_slice(c);
            let mut mask = vec![0u8; self.prompt.len()];
            mask.extend(std::iter::repeat_n(1u8, c.len()));
            Sequence { ids, mask }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    Sigmoid,
    Ipo,
    Hinge,
    Robust,
}

/// log σ(x), stable for large |x|.
pub(super) fn log_sigmoid(x: f64) -> f64 {
    -((-x).max(0.0) + (-x.abs()).exp().ln_1p())
}

pub(super) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One pair's DPO loss and its derivatives with respect to the policy's chosen and rejected
/// log-probabilities, given the reference's.
#[derive(Debug, PartialEq)]
pub struct PairLoss {
    pub loss: f64,
    pub d_chosen: f64,
    pub d_rejected: f64,
}

/// DPO's own fields of the stage (the schema holds their defaults).
#[derive(Debug, serde::Deserialize)]
pub struct DpoSettings {
    pub beta: f64,
    pub loss: DpoLoss,
    pub label_smoothing: f64,
}

impl DpoSettings {
    /// `logps` = (policy chosen, policy rejected, reference chosen, reference rejected); `lens` the
    /// two completions' token counts (IPO averages per token).
    pub fn pair_loss(&self, logps: [f64; 4], lens: [usize; 2]) -> PairLoss {
        let [pc, pr, rc, rr] = logps;
        let beta = self.beta;
        let (chosen, rejected) = (pc - rc, pr - rr);
        let delta = chosen - rejected;
        let eps = self.label_smoothing;
        // (loss, dloss/dΔ) for the losses that depend on Δ alone.
        let of_delta = |loss: f64, d: f64| PairLoss {
            loss,
            d_chosen: d,
            d_rejected: -d,
        };
        match self.loss {
            DpoLoss::Sigmoid => {
                of_delta(-log_sigmoid(beta * delta), -beta * sigmoid(-beta * delta))
            }
            DpoLoss::Hinge => {
                let margin = 1.0 - beta * delta;
                of_delta(margin.max(0.0), if margin > 0.0 { -beta } else { 0.0 })
            }
            DpoLoss::Robust => {
                let loss = (-(1.0 - eps) * log_sigmoid(beta * delta)
                    + eps * log_sigmoid(-beta * delta))
                    / (1.0 - 2.0 * eps);
                let d = (-(1.0 - eps) * beta * sigmoid(-beta * delta)
                    - eps * beta * sigmoid(beta * delta))
                    / (1.0 - 2.0 * eps);
                of_delta(loss, d)
            }
            DpoLoss::Ipo => {
                let (nc, nr) = (lens[0].max(1) as f64, lens[1].max(1) as f64);
                let gap = chosen / nc - rejected / nr - 1.0 / (2.0 * beta);
                PairLoss {
                    loss: gap * gap,
                    d_chosen: 2.0 * gap / nc,
                    d_rejected: -2.0 * gap / nr,
                }
            }
        }
    }
}

/// What DPO logs per step besides the loss, by TRL's names (means over the step's pairs).
pub const DPO_METRICS: [&str; 6] = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
];

/// Summed completion log-probabilities of each sequence of a padded batch, and what the passes need.
pub(super) struct Forward {
    pub(super) hidden: candle_core::Tensor,
    pub(super) targets: Vec<u32>,
    /// 1 where the target is a completion token.
    pub(super) mask: Vec<f32>,
    /// 1 where the target is a real token (prompt or completion), 0 on padding.
    real: Vec<f32>,
    /// log p(target) at every position.
    logps: Vec<f32>,
    pub(super) width: usize,
    pub(super) sums: Vec<f64>,
}

pub(super) fn forward(model: &Decoder, seqs: &[Sequence]) -> crate::error::Result<Forward> {
    let rows: Vec<Vec<&Sequence>> = seqs.iter().map(|s| vec![s]).collect();
    let b = batch(&rows);
    let width = b.ids.first().map_or(0, Vec::len);
    let hidden = model
        .hidden_packed(&b.ids, &b.segments)?
        .reshape((b.ids.len() * width, model.cfg.hidden_size))?;
    let logps = model_token_logps(model, &hidden, &b.targets, 1.0)?;
    let sums = (0..seqs.len())
        .map(|i| {
            (i * width..(i + 1) * width)
                .map(|t| (logps[t] * b.mask[t]) as f64)
                .sum()
        })
        .collect();
    let real = b
        .segments
        .iter()
        .flatten()
        .map(|&s| f32::from(u8::from(s != 0)))
        .collect();
    Ok(Forward {
        hidden,
        targets: b.targets,
        mask: b.mask,
        real,
        logps,
        width,
        sums,
    })
}

/// Adds one pair's rewards/chosen, rewards/rejected, rewards/accuracies (strictly greater),
/// rewards/margins, logps/chosen and logps/rejected to the first six metric sums.
fn add_rewards(sums: &mut [f64], reward_c: f64, reward_r: f64, logp_c: f64, logp_r: f64) {
    for (sum, v) in sums.iter_mut().zip([
        reward_c,
        reward_r,
        f64::from(u8::from(reward_c > reward_r)),
        reward_c - reward_r,
        logp_c,
        logp_r,
    ]) {
        *sum += v;
    }
}

/// (chosen, rejected) summed completion log-probabilities of every pair under `model` (no gradient),
/// `batch_size` pairs at a time.
pub fn reference_logps(
    model: &Decoder,
    pairs: &[Pair],
    batch_size: usize,
) -> crate::error::Result<Vec<(f64, f64)>> {
    let all: Vec<usize> = (0..pairs.len()).collect();
    let mut out = Vec::with_capacity(pairs.len());
    for group in all.chunks(batch_size.max(1)) {
        let (ids, seqs) = concatenated(pairs, &[group]);
        let f = forward(model, &seqs)?;
        let n = ids.len();
        out.extend((0..n).map(|i| (f.sums[i], f.sums[n + i])));
    }
    Ok(out)
}

/// SimPO's fields of the stage (the schema holds their defaults).
#[derive(Debug, serde::Deserialize)]
pub struct SimpoSettings {
    pub beta: f64,
    pub gamma: f64,
    pub cpo_alpha: f64,
    pub label_smoothing: f64,
}

impl SimpoSettings {
    /// One pair's loss and its derivatives with respect to the summed chosen and rejected
    /// log-probabilities, from the sums and the completions' token counts (SimPO averages per token).
    pub fn pair_loss(&self, sums: [f64; 2], lens: [usize; 2]) -> PairLoss {
        let (nc, nr) = (lens[0].max(1) as f64, lens[1].max(1) as f64);
        let z = self.beta * (sums[0] / nc - sums[1] / nr) - self.gamma;
        let eps = self.label_smoothing;
        let loss = -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
        let dz = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
        PairLoss {
            loss,
            d_chosen: dz * self.beta / nc,
            d_rejected: -dz * self.beta / nr,
        }
    }
}

/// What SimPO logs per step besides the loss, by TRL's names (logps are per-token averages).
pub const SIMPO_METRICS: [&str; 7] = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "nll_loss",
];

/// The sequences of a micro-batch of pairs: [chosen…; rejected…], and the pair ids in order.
fn concatenated(pairs: &[Pair], rows: &[&[usize]]) -> (Vec<usize>, Vec<Sequence>) {
    let ids: Vec<usize> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    let (chosen, rejected): (Vec<Sequence>, Vec<Sequence>) = ids
        .iter()
        .map(|&i| {
            let [c, r] = pairs[i].sequences();
            (c, r)
        })
        .unzip();
    (ids, chosen.into_iter().chain(rejected).collect())
}

/// log(1 − eˣ) for x < 0, stable on both sides of −ln 2 (as TRL's ORPO).
fn log1mexp(x: f64) -> f64 {
    if x < -std::f64::consts::LN_2 {
        (-x.exp()).ln_1p()
    } else {
        (-x.exp_m1()).ln()
    }
}

/// ORPO's fields of the stage (the schema holds the default).
#[derive(Debug, serde::Deserialize)]
pub struct OrpoSettings {
    pub beta: f64,
}

/// One ORPO pair from the average completion log-probs: the odds-ratio term's loss −β·logσ(log odds),
/// its derivatives with respect to the two averages, the log odds and logσ of it.
pub struct OddsRatio {
    pub loss: f64,
    pub d_chosen: f64,
    pub d_rejected: f64,
    pub log_odds: f64,
    pub ratio: f64,
}

impl OrpoSettings {
    pub fn odds_ratio(&self, avg_c: f64, avg_r: f64) -> OddsRatio {
        let log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r));
        let ratio = log_sigmoid(log_odds);
        let d = -self.beta * sigmoid(-log_odds);
        OddsRatio {
            loss: -self.beta * ratio,
            // d log_odds / d avg_c = 1 / (1 − e^avg_c); / d avg_r = −1 / (1 − e^avg_r).
            d_chosen: d / -avg_c.exp_m1(),
            d_rejected: -d / -avg_r.exp_m1(),
            log_odds,
            ratio,
        }
    }
}

/// What ORPO logs per step besides the loss, by TRL's names.
pub const ORPO_METRICS: [&str; 9] = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "nll_loss",
    "log_odds_ratio",
    "log_odds_chosen",
];

/// What a preference rule makes of a micro-batch's forward: the loss summed over its pairs, the
/// loss's derivative per sequence (rows [chosen…; rejected…]) with respect to its summed completion
/// log-prob, optional per-position additions to that gradient, and metric sums in `metrics()` order.
struct Scored {
    value: f64,
    coef: Vec<f64>,
    extra: Option<Vec<f64>>,
    sums: Vec<f64>,
}

/// A pairwise loss: DPO, SimPO or ORPO.
trait PairRule {
    fn metrics(&self) -> &'static [&'static str];
    fn score(&self, pairs: &[Pair], ids: &[usize], f: &Forward) -> Scored;
}

/// A pairwise objective: the pairs in the loop's data order, one rule for their loss.
struct PairObjective<R> {
    pairs: Vec<Pair>,
    rule: R,
    rows: Vec<Vec<usize>>,
}

fn pair_objective<R: PairRule>(pairs: Vec<Pair>, rule: R) -> PairObjective<R> {
    let rows = (0..pairs.len()).map(|i| vec![i]).collect();
    PairObjective { pairs, rule, rows }
}

impl<R: PairRule> Objective for PairObjective<R> {
    fn rows(&self) -> &[Vec<usize>] {
        &self.rows
    }

    /// The widest micro-batch of `batch_size` pairs: twice as many sequences as pairs.
    fn batch_shape(&self, batch_size: usize) -> (usize, usize) {
        let widest = self
            .pairs
            .iter()
            .map(|p| p.prompt.len() + p.chosen.len().max(p.rejected.len()))
            .max()
            .unwrap_or(1);
        (2 * batch_size, widest)
    }

    fn micro_batch(
        &self,
        model: &Decoder,
        rows: &[&[usize]],
        _draw: u64,
    ) -> crate::error::Result<MicroLoss> {
        let (ids, seqs) = concatenated(&self.pairs, rows);
        let f = forward(model, &seqs)?;
        let scored = self.rule.score(&self.pairs, &ids, &f);
        let extra = scored.extra.as_deref();
        // The gradient of the summed loss: Σ_t (coef(row of t) · mask_t + extra_t) · ∇log p_t.
        let weights: Vec<f32> = (0..f.targets.len())
            .map(|t| {
                (scored.coef[t / f.width] * f.mask[t] as f64 + extra.map_or(0.0, |e| e[t])) as f32
            })
            .collect();
        let surrogate = model_surrogate(model, &f.hidden, &f.targets, &weights, 1.0)?;
        Ok(MicroLoss {
            surrogate,
            value: scored.value,
            weight: ids.len() as f64,
            tokens: f.mask.iter().map(|&m| m as f64).sum(),
            metrics: metrics_over(self.rule.metrics(), &scored.sums, ids.len() as f64),
        })
    }
}

/// DPO against reference log-probabilities computed before training.
pub fn dpo(pairs: Vec<Pair>, reference: Vec<(f64, f64)>, settings: DpoSettings) -> impl Objective {
    pair_objective(
        pairs,
        DpoRule {
            settings,
            reference,
        },
    )
}

/// SimPO, reference-free: length-normalized log-probabilities with a target margin, plus `cpo_alpha`
/// times the token-mean NLL of the chosen completions (TRL's CPO term).
pub fn simpo(pairs: Vec<Pair>, settings: SimpoSettings) -> impl Objective {
    pair_objective(pairs, settings)
}

/// ORPO, reference-free: the token-mean NLL of the chosen sequences (prompt and completion, as TRL)
/// minus β · logσ(log odds of chosen over rejected), on per-token average completion log-probs.
pub fn orpo(pairs: Vec<Pair>, settings: OrpoSettings) -> impl Objective {
    pair_objective(pairs, settings)
}

struct DpoRule {
    settings: DpoSettings,
    reference: Vec<(f64, f64)>,
}

impl PairRule for DpoRule {
    fn metrics(&self) -> &'static [&'static str] {
        &DPO_METRICS
    }

    fn score(&self, pairs: &[Pair], ids: &[usize], f: &Forward) -> Scored {
        let n = ids.len();
        let beta = self.settings.beta;
        let mut scored = Scored::new(n, self.metrics().len());
        for (k, &i) in ids.iter().enumerate() {
            let (pc, pr) = (f.sums[k], f.sums[n + k]);
            let (rc, rr) = self.reference[i];
            let lens = [pairs[i].chosen.len(), pairs[i].rejected.len()];
            let l = self.settings.pair_loss([pc, pr, rc, rr], lens);
            scored.value += l.loss;
            scored.coef[k] = l.d_chosen;
            scored.coef[n + k] = l.d_rejected;
            add_rewards(&mut scored.sums, beta * (pc - rc), beta * (pr - rr), pc, pr);
        }
        scored
    }
}

impl Scored {
    fn new(pairs: usize, metrics: usize) -> Scored {
        Scored {
            value: 0.0,
            coef: vec![0.0; 2 * pairs],
            extra: None,
            sums: vec![0.0; metrics],
        }
    }
}

impl PairRule for SimpoSettings {
    fn metrics(&self) -> &'static [&'static str] {
        &SIMPO_METRICS
    }

    fn score(&self, pairs: &[Pair], ids: &[usize], f: &Forward) -> Scored {
        let n = ids.len();
        // The CPO term: token-mean NLL over every chosen completion token of the micro-batch.
        let chosen_tokens: f64 = f.mask[..n * f.width].iter().map(|&m| m as f64).sum();
        let nll = -f.sums[..n].iter().sum::<f64>() / chosen_tokens.max(1.0);
        let mut scored = Scored::new(n, self.metrics().len());
        scored.value = n as f64 * self.cpo_alpha * nll;
        for (k, &i) in ids.iter().enumerate() {
            let lens = [pairs[i].chosen.len(), pairs[i].rejected.len()];
            let l = self.pair_loss([f.sums[k], f.sums[n + k]], lens);
            scored.value += l.loss;
            scored.coef[k] = l.d_chosen - n as f64 * self.cpo_alpha / chosen_tokens.max(1.0);
            scored.coef[n + k] = l.d_rejected;
            let (avg_c, avg_r) = (
                f.sums[k] / lens[0].max(1) as f64,
                f.sums[n + k] / lens[1].max(1) as f64,
            );
            add_rewards(
                &mut scored.sums,
                self.beta * avg_c,
                self.beta * avg_r,
                avg_c,
                avg_r,
            );
            // TRL logs the NLL only when it is part of the loss (0 otherwise).
            scored.sums[6] += if self.cpo_alpha == 0.0 { 0.0 } else { nll };
        }
        scored
    }
}

impl PairRule for OrpoSettings {
    fn metrics(&self) -> &'static [&'static str] {
        &ORPO_METRICS
    }

    fn score(&self, pairs: &[Pair], ids: &[usize], f: &Forward) -> Scored {
        let n = ids.len();
        // The NLL: token mean over every real target of the chosen rows, prompt included.
        let chosen = 0..n * f.width;
        let nll_tokens: f64 = f.real[chosen.clone()].iter().map(|&r| r as f64).sum();
        let nll = -chosen
            .clone()
            .map(|t| (f.logps[t] * f.real[t]) as f64)
            .sum::<f64>()
            / nll_tokens.max(1.0);
        let mut extra = vec![0.0f64; f.targets.len()];
        for t in chosen {
            extra[t] = -(n as f64) * f.real[t] as f64 / nll_tokens.max(1.0);
        }
        let mut scored = Scored::new(n, self.metrics().len());
        scored.value = n as f64 * nll;
        for (k, &i) in ids.iter().enumerate() {
            let (nc, nr) = (
                pairs[i].chosen.len().max(1) as f64,
                pairs[i].rejected.len().max(1) as f64,
            );
            let (avg_c, avg_r) = (f.sums[k] / nc, f.sums[n + k] / nr);
            let o = self.odds_ratio(avg_c, avg_r);
            scored.value += o.loss;
            scored.coef[k] = o.d_chosen / nc;
            scored.coef[n + k] = o.d_rejected / nr;
            add_rewards(
                &mut scored.sums,
                self.beta * avg_c,
                self.beta * avg_r,
                avg_c,
                avg_r,
            );
            scored.sums[6] += nll;
            scored.sums[7] += o.ratio;
            scored.sums[8] += o.log_odds;
        }
        scored.extra = Some(extra);
        scored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each loss's derivative agrees with a central finite difference of the loss itself.
    #[test]
    fn pair_loss_derivatives_match_finite_differences() {
        for loss in [
            DpoLoss::Sigmoid,
            DpoLoss::Ipo,
            DpoLoss::Hinge,
            DpoLoss::Robust,
        ] {
            let s = DpoSettings {
                beta: 0.1,
                loss,
                label_smoothing: 0.1,
            };
            let at = [-20.0, -27.0, -21.0, -25.0];
            let simpo = SimpoSettings {
                beta: 2.0,
                gamma: 0.5,
                cpo_alpha: 0.0,
                label_smoothing: 0.1,
            };
            let l = simpo.pair_loss([at[0], at[1]], [4, 7]);
            for (i, want) in [(0, l.d_chosen), (1, l.d_rejected)] {
                let mut up = [at[0], at[1]];
                let mut down = up;
                up[i] += 1e-5;
                down[i] -= 1e-5;
                let fd =
                    (simpo.pair_loss(up, [4, 7]).loss - simpo.pair_loss(down, [4, 7]).loss) / 2e-5;
                assert!((fd - want).abs() < 1e-7, "simpo[{i}]: {fd} vs {want}");
            }
            let lens = [4, 7];
            let l = s.pair_loss(at, lens);
            let h = 1e-5;
            for (i, want) in [(0, l.d_chosen), (1, l.d_rejected)] {
                let (mut up, mut down) = (at, at);
                up[i] += h;
                down[i] -= h;
                let fd = (s.pair_loss(up, lens).loss - s.pair_loss(down, lens).loss) / (2.0 * h);
                assert!((fd - want).abs() < 1e-7, "{loss:?}[{i}]: {fd} vs {want}");
            }
        }
        // ORPO's odds-ratio term, against finite differences of its loss.
        let orpo = OrpoSettings { beta: 0.5 };
        for (c, r) in [(-2.5, -3.0), (-0.3, -0.9)] {
            let o = orpo.odds_ratio(c, r);
            let h = 1e-6;
            let fd_c =
                (orpo.odds_ratio(c + h, r).loss - orpo.odds_ratio(c - h, r).loss) / (2.0 * h);
            let fd_r =
                (orpo.odds_ratio(c, r + h).loss - orpo.odds_ratio(c, r - h).loss) / (2.0 * h);
            assert!((fd_c - o.d_chosen).abs() < 1e-7, "{fd_c} vs {}", o.d_chosen);
            assert!(
                (fd_r - o.d_rejected).abs() < 1e-7,
                "{fd_r} vs {}",
                o.d_rejected
            );
        }
        // With the policy equal to the reference the sigmoid loss is ln 2.
        let s = DpoSettings {
            beta: 0.1,
            loss: DpoLoss::Sigmoid,
            label_smoothing: 0.0,
        };
        let l = s.pair_loss([-5.0, -6.0, -5.0, -6.0], [1, 1]);
        assert!((l.loss - std::f64::consts::LN_2).abs() < 1e-15);
    }
}
