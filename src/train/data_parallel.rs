//! A training step shared by the workers of a data-parallel stage: which micro-batches are whose,
//! and how their gradients and loss sums become the step of one worker that saw them all.

use super::collective::Collective;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

/// Whether micro-batch `index` of a step (cut from the step's rows in order) is this worker's: the
/// step of N workers with micro-batches of b rows is the step of one worker with micro-batches of
/// N·b rows, each of those cut into N consecutive shares.
pub fn is_mine(index: usize, group: Option<&dyn Collective>) -> bool {
    group.is_none_or(|g| index % g.world() == g.rank())
}

/// A worker's sums of one update, besides its gradients.
pub struct Shares {
    pub loss_sum: f64,
    pub weight: f64,
    pub tokens: f64,
    /// (name, sum, count) of each metric; after [`sum_over_workers`], every worker's in rank order
    /// (the loop's metric sums merge them by name).
    pub metrics: Vec<(String, f64, f64)>,
    /// Per trained variable, whether this worker's micro-batches gave it a gradient.
    pub has_grad: Vec<bool>,
}

impl Shares {
    /// Adds `other`'s sums, and appends its metrics.
    fn add(&mut self, other: Shares) {
        self.loss_sum += other.loss_sum;
        self.weight += other.weight;
        self.tokens += other.tokens;
        self.metrics.extend(other.metrics);
        for (a, b) in self.has_grad.iter_mut().zip(other.has_grad) {
            *a |= b;
        }
    }
}

/// [`Shares`] as the workers exchange them: every float as its bits, so that a NaN or infinite
/// loss (JSON has neither) reaches every worker, which then stops on it together.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    loss_sum: u64,
    weight: u64,
    tokens: u64,
    metrics: Vec<(String, u64, u64)>,
    has_grad: Vec<bool>,
}

impl From<&Shares> for Wire {
    fn from(s: &Shares) -> Wire {
        Wire {
            loss_sum: s.loss_sum.to_bits(),
            weight: s.weight.to_bits(),
            tokens: s.tokens.to_bits(),
            metrics: s
                .metrics
                .iter()
                .map(|(n, sum, count)| (n.clone(), sum.to_bits(), count.to_bits()))
                .collect(),
            has_grad: s.has_grad.clone(),
        }
    }
}

impl From<Wire> for Shares {
    fn from(w: Wire) -> Shares {
        Shares {
            loss_sum: f64::from_bits(w.loss_sum),
            weight: f64::from_bits(w.weight),
            tokens: f64::from_bits(w.tokens),
            metrics: w
                .metrics
                .into_iter()
                .map(|(n, sum, count)| (n, f64::from_bits(sum), f64::from_bits(count)))
                .collect(),
            has_grad: w.has_grad,
        }
    }
}

fn internal(e: impl std::fmt::Display) -> crate::error::Error {
    crate::error::Error::Internal(format!("summing over workers: {e}"))
}

/// Replaces this worker's gradient sums and `shares` by the sums over all workers. Every worker ends
/// with the same bits: the ring sums each chunk once and copies it, and the small sums are added in
/// rank order on every worker.
pub fn sum_over_workers(
    group: &dyn Collective,
    grads: &mut GradStore,
    vars: &[(String, Var)],
    shares: &mut Shares,
) -> crate::error::Result<()> {
    shares.has_grad = vars.iter().map(|(_, v)| grads.get(v).is_some()).collect();
    let mine = serde_json::to_vec(&Wire::from(&*shares)).map_err(internal)?;
    let mut all: Vec<Shares> = group
        .all_gather(&mine)?
        .iter()
        .map(|b| serde_json::from_slice::<Wire>(b).map(Shares::from))
        .collect::<Result<_, _>>()
        .map_err(internal)?;
    let mut total = all.remove(0);
    for other in all {
        total.add(other);
    }
    // One buffer of every gradient (zeros where this worker has none), summed in one collective.
    let mut flat: Vec<f32> = Vec::new();
    for (_, v) in vars {
        match grads.get(v) {
            Some(g) => flat.extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => flat.extend(std::iter::repeat_n(0f32, v.elem_count())),
        }
    }
    group.all_reduce_sum(&mut flat)?;
    let mut at = 0;
    for ((_, v), &has) in vars.iter().zip(&total.has_grad) {
        let n = v.elem_count();
        if has {
            let g = Tensor::from_slice(&flat[at..at + n], v.shape(), v.device())?
                .to_dtype(v.dtype())?;
            grads.insert(v, g);
        }
        at += n;
    }
    *shares = total;
    Ok(())
}

/// The dropout generator of worker `rank` at the start of training, from worker 0's: each worker
/// drops different units.
pub fn dropout_state(first: u64, rank: usize) -> u64 {
    if rank == 0 {
        return first;
    }
    crate::model::lora::Rng::new(first ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).state()
}
