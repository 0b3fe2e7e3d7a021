//! PPO against TRL's experimental PPOTrainer (tests/fixtures/ppo, made by
//! scripts/make_ppo_fixture.py with TRL 0.29's own `train()` on fixed responses).

use candle_core::{DType, Device, Var};
use ptl::lang::value::Tuning;
use ptl::model::decoder::Decoder;
use ptl::train::completions::Rollout;
use ptl::train::objective::MicroLoss;
use ptl::train::optim::AdamW;
use ptl::train::ppo::{micro_loss, Buffer, KlEstimator, PpoSettings, LOSS_METRICS};
use ptl::train::ppo_rollouts::{Ppo, PpoModels};
use serde_json::Value as Json;
use std::path::Path;

/// Every comparison with TRL is within this, absolute below 1 and relative above (f32 models; the
/// worst seen is printed).
const TOLERANCE: f64 = 1e-5;

fn load(dir: &str) -> Decoder {
    Decoder::load(Path::new(dir), &Device::Cpu).unwrap()
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f64s(v: &Json) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The global norm of the gradients `micro` gives `vars`.
fn grad_norm(micro: &MicroLoss, vars: &[(String, Var)]) -> (candle_core::backprop::GradStore, f64) {
    let grads = micro.surrogate.backward().unwrap();
    let sum: f64 = vars
        .iter()
        .filter_map(|(_, v)| grads.get(v))
        .map(|g| {
            g.to_dtype(DType::F64)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .sum();
    (grads, sum.sqrt())
}

/// Tracks the worst difference of each kind of number.
#[derive(Default)]
struct Worst(Vec<(&'static str, f64)>);

impl Worst {
    /// Absolute below 1, relative above (the logged sums reach 20).
    fn see(&mut self, what: &'static str, got: f64, want: f64) {
        let d = (got - want).abs() / want.abs().max(1.0);
        match self.0.iter_mut().find(|(w, _)| *w == what) {
            Some((_, worst)) => *worst = worst.max(d),
            None => self.0.push((what, d)),
        }
    }
}

/// One PPO update on fixed responses, for the k1 and the k3 KL estimators: the values, scores and
/// advantages of the rollout phase (before and after whitening), the loss and gradient norm of both
/// optimizer steps (the second after an AdamW step, where ratios and clipping move), and the
/// metrics TRL logged.
#[test]
fn an_update_equals_trl() {
    let want: Json =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/ppo/expected.json").unwrap())
            .unwrap();
    let eos = want["eos"].as_u64().unwrap() as u32;
    let f = |k: &str| want[k].as_f64().unwrap();
    let mut worst = Worst::default();
    for case in want["cases"].as_array().unwrap() {
        let settings = PpoSettings {
            kl_coef: f("kl_coef"),
            kl_estimator: match case["kl_estimator"].as_str().unwrap() {
                "k1" => KlEstimator::K1,
                _ => KlEstimator::K3,
            },
            cliprange: f("cliprange"),
            cliprange_value: f("cliprange_value"),
            vf_coef: f("vf_coef"),
            gamma: f("gamma"),
            lam: f("lam"),
            temperature: f("temperature"),
            missing_eos_penalty: Some(f("missing_eos_penalty")),
        };
        let queries: Vec<Vec<u32>> = case["queries"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect();
        let rollouts: Vec<Rollout> = queries
            .iter()
            .map(|q| {
                let completion = ids(&want["responses"][format!("{q:?}")]);
                Rollout {
                    prompt: q.clone(),
                    terminated: completion.last() == Some(&eos),
                    completion,
                }
            })
            .collect();
        let mut policy = load("tests/fixtures/mergekit/a");
        let mut vars = policy.apply_tuning(&Tuning::Full, 0).unwrap();
        let mut critic = load("tests/fixtures/ppo/reward");
        let critic_vars = critic.apply_tuning(&Tuning::Full, 0).unwrap();
        vars.extend(
            critic_vars
                .into_iter()
                .map(|(n, v)| (format!("value.{n}"), v)),
        );
        let models = PpoModels {
            reference: load("tests/fixtures/nf4/qwen3"),
            reward: load("tests/fixtures/ppo/reward"),
            critic,
        };
        let ppo = Ppo::new(
            queries.clone(),
            vec![eos],
            models,
            settings.clone(),
            6,
            2,
            1,
        );
        let buffer = Buffer::new(ppo.measure(&policy, rollouts).unwrap(), &settings);
        for (k, (x, t)) in buffer.samples.iter().zip(&buffer.targets).enumerate() {
            worst.see("score", x.score, f64s(&case["scores"])[k]);
            for (j, v) in t.values.iter().enumerate() {
                worst.see("value", *v, f64s(&case["values"][k])[j]);
            }
            let raw = f64s(&case["advantages_raw"][k]);
            for (j, a) in raw.iter().enumerate() {
                worst.see(
                    "raw advantage",
                    *t.raw_advantages.get(j).unwrap_or(&0.0),
                    *a,
                );
            }
            let whitened = f64s(&case["advantages"][k]);
            for (a, w) in t.advantages.iter().zip(whitened) {
                worst.see("advantage", *a, w);
            }
        }
        let all: Vec<usize> = (0..buffer.samples.len()).collect();
        let mut opt = AdamW::new(&vars, 0.9, 0.999, 1e-8, 0.0).unwrap();
        let mut sums = vec![0.0; LOSS_METRICS.len()];
        for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let micro = micro_loss(&policy, &ppo.models.critic, &buffer, &all, &settings).unwrap();
            let (grads, norm) = grad_norm(&micro, &vars);
            worst.see("loss", micro.value, step["loss"].as_f64().unwrap());
            let trl_norm = step["grad_norm"].as_f64().unwrap();
            worst.see("gradient norm (relative)", norm / trl_norm, 1.0);
            for (sum, m) in sums.iter_mut().zip(&micro.metrics) {
                *sum += m.sum;
            }
            if i == 0 {
                opt.step(&grads, f("learning_rate")).unwrap();
            }
        }
        let metrics = &case["metrics"];
        for (name, sum) in LOSS_METRICS.iter().zip(&sums) {
            worst.see("logged metric", sum / 2.0, metrics[*name].as_f64().unwrap());
        }
        for m in buffer.metrics() {
            worst.see("logged metric", m.sum, metrics[m.name].as_f64().unwrap());
        }
    }
    eprintln!("vs TRL: {:?}", worst.0);
    for (what, d) in &worst.0 {
        assert!(*d < TOLERANCE, "{what}: {d:e} ({:?})", worst.0);
    }
}

#[macro_use]
mod common;

const STAGES: &str = concat!(
    tiny_sft_stages!(),
    r#"stage judge = reward_model {
  model = tuned.model
  data = jsonl("data/preference/prefs.jsonl", format = "preference")
  max_steps = 60
  lr = 1e-3
  batch_size = 8
  max_len = 64
}

stage rl = ppo {
  model = tuned.model
  reward = judge.model
  data = jsonl("data/quickstart/train.jsonl", format = "messages")
  batch_size = 16
  response_length = 6
  ppo_epochs = 2
  lr = 1e-3
  max_steps = 16
  save_every = 3
}
"#
);

/// The quickstart's tokenizer and data with `pipeline` as p.ptl.
fn ppo_dir(name: &str, pipeline: &str) -> common::Dir {
    let d = common::pipeline_copy(
        &format!("ppo-{name}"),
        &["tokenizers/tiny-chat", "data/quickstart", "data/preference"],
    );
    std::fs::write(d.0.join("p.ptl"), pipeline).unwrap();
    d
}

/// SFT → reward model → PPO: the reward model's score of the policy's responses rises (the mean
/// over the last 8 steps above the first 4's), TRL's metric names are logged, and a run killed
/// after step 5 resumes from its checkpoint at step 3 and ends with the uninterrupted run's metrics
/// and weights, bit for bit.
#[test]
fn a_ppo_stage_raises_its_score_and_resumes_bit_identical() {
    let whole = ppo_dir("whole", STAGES);
    let o = common::ptl(&whole.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::text(&o));
    let m = common::stage_metrics(&whole.0, "rl");
    assert_eq!(m.len(), 16);
    for name in [
        "objective/kl",
        "objective/scores",
        "objective/rlhf_reward",
        "objective/non_score_reward",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/clipfrac_avg",
        "val/ratio",
    ] {
        assert!(
            m[0][name].as_f64().is_some_and(f64::is_finite),
            "{name} in {}",
            m[0]
        );
    }
    let mean = |r: &[Json]| {
        r.iter()
            .map(|x| x["objective/scores"].as_f64().unwrap())
            .sum::<f64>()
            / r.len() as f64
    };
    let (first, last) = (mean(&m[..4]), mean(&m[8..]));
    eprintln!("score over the first 4 steps {first:.3}, the last 8 {last:.3}");
    assert!(last > first + 0.08, "{first} -> {last}");

    let crashed = ppo_dir("crashed", STAGES);
    common::crash_then_resume(
        &crashed.0,
        &["base", "tuned", "judge"],
        "crash_after_step:5",
        "rl: resuming from the checkpoint at step 3",
    );
    assert_eq!(common::stage_metrics(&crashed.0, "rl"), m);
    common::same_model(&crashed.0, &whole.0, "rl");
}

/// A copy of `from` (a folder under the repository) at `to` in `dir`.
fn copy_folder(dir: &Path, from: &str, to: &str) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join(from);
    std::fs::create_dir_all(dir.join(to)).unwrap();
    for f in std::fs::read_dir(&from).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(to).join(f.file_name().unwrap())).unwrap();
    }
}

/// A reward model of another vocabulary than the policy: refused by `ptl check` when the checker
/// knows both (a reward model trained from a 256-token model, a policy of 151,936), and at the
/// stage's start when the policy's vocabulary is known only once it runs (an `init` model of 100).
#[test]
fn a_reward_model_of_another_vocabulary_is_refused() {
    let judge = r#"stage judge = reward_model {
  model = hf_model("models/rm-base")
  data = jsonl("data/preference/prefs.jsonl", format = "preference")
  max_steps = 1
  batch_size = 2
  max_len = 64
}
"#;
    let rl = |model: &str| {
        format!(
            r#"stage rl = ppo {{
  model = {model}
  reward = judge.model
  data = jsonl("data/quickstart/train.jsonl", format = "messages")
  max_steps = 1
}}
"#
        )
    };
    // A 256-token Qwen3 with the tiny chat tokenizer (its 100 ids fit).
    let with_models = |name: &str, pipeline: String| {
        let d = ppo_dir(name, &pipeline);
        copy_folder(&d.0, "tests/fixtures/models/qwen3", "models/rm-base");
        copy_folder(&d.0, "pipelines/tokenizers/tiny-chat", "models/rm-base");
        copy_folder(&d.0, "pipelines/models/qwen3-tiny", "models/qwen3-tiny");
        d
    };
    let d = with_models(
        "vocab-check",
        judge.to_string() + &rl("hf_model(\"models/qwen3-tiny\")"),
    );
    let o = common::ptl(&d.0, &["check", "p.ptl"]);
    let text = common::text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ptl::vocab_mismatch")
            && text.contains("vocabulary of 256 tokens, the policy 151936"),
        "{text}"
    );

    let base =
        "stage base = init {\n  tokenizer = \"tokenizers/tiny-chat\"\n  size = \"tiny\"\n}\n";
    let d = with_models("vocab-run", base.to_string() + judge + &rl("base.model"));
    let o = common::ptl(&d.0, &["check", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::text(&o));
    let o = common::ptl(&d.0, &["run", "p.ptl"]);
    let text = common::text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ptl::vocab_mismatch")
            && text.contains("does not share the policy's vocabulary: 256 tokens, the policy 100"),
        "{text}"
    );
}

/// `workers = 2`: each worker samples and measures its own micro-batches of prompts (with the
/// seeds those micro-batches have in one process), the workers gather them so that each holds the
/// whole batch (its width, whitened advantages, metrics and shuffle), and each update's micro-batch
/// i is worker i mod 2's. The stage ends with the weights and metrics of one process accumulating
/// the same micro-batches, bit for bit: with one mini-batch a step, with two, and with two
/// mini-batches of one micro-batch each (worker 1 has none and adds zeros).
#[test]
fn two_workers_equal_one_process_accumulating_their_micro_batches() {
    // STAGES's `rl` for 3 steps with `fields`.
    let rl = |name: &str, fields: &str| {
        let body = STAGES.split("stage rl = ppo").nth(1).unwrap();
        format!("stage {name} = ppo{body}\n")
            .replace("  batch_size = 16\n", "")
            .replace(
                "max_steps = 16\n  save_every = 3\n",
                &format!("max_steps = 3\n  {fields}\n"),
            )
    };
    let cases = [
        (
            "two",
            "one",
            "batch_size = 8",
            "workers = 2",
            "grad_accum = 2",
        ),
        (
            "two_mini",
            "one_mini",
            "batch_size = 4\n  num_mini_batches = 2",
            "grad_accum = 2\n  workers = 2",
            "grad_accum = 4",
        ),
        (
            "two_idle",
            "one_idle",
            "batch_size = 8\n  num_mini_batches = 2",
            "workers = 2",
            "grad_accum = 2",
        ),
    ];
    let mut stages = STAGES.split("stage rl = ppo").next().unwrap().to_string();
    for (two, one, both, workers, accumulating) in cases {
        stages += &rl(two, &format!("{both}\n  {workers}"));
        stages += &rl(one, &format!("{both}\n  {accumulating}"));
    }
    let d = ppo_dir("workers", &stages);
    let pairs: Vec<(&str, &str)> = cases.iter().map(|c| (c.0, c.1)).collect();
    for ((ma, mb), (two, one)) in common::two_workers_as_one(&d.0, "tuned", &pairs)
        .iter()
        .zip(&pairs)
    {
        assert_eq!(ma, mb, "{two} vs {one}");
    }
}
