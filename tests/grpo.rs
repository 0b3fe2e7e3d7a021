//! GRPO: the loss of scored rollouts moves the policy toward completions with a positive advantage
//! and away from those with a negative one.

use candle_core::Device;
use ptl::lang::value::Tuning;
use ptl::model::decoder::Decoder;
use ptl::train::grpo::{
    completion_logps, rollout_loss, GrpoSettings, LossType, Rollout, ScaleRewards,
};

fn settings(loss_type: LossType) -> GrpoSettings {
    GrpoSettings {
        num_generations: 2,
        max_completion_length: 8,
        temperature: 1.0,
        beta: 0.0,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        loss_type,
        scale_rewards: ScaleRewards::Group,
        mask_truncated_completions: false,
        num_iterations: 1,
    }
}

#[test]
fn a_step_raises_the_log_prob_of_a_positive_advantage() {
    let mut model = Decoder::load(
        std::path::Path::new("tests/fixtures/nf4/qwen3"),
        &Device::Cpu,
    )
    .unwrap();
    let vars = model.apply_tuning(&Tuning::Full, 0).unwrap();
    let rollouts = vec![
        Rollout {
            prompt: vec![5, 9, 20],
            completion: vec![33, 41, 50],
            terminated: true,
        },
        Rollout {
            prompt: vec![5, 9, 20],
            completion: vec![60, 70, 80, 90],
            terminated: true,
        },
    ];
    for loss_type in [
        LossType::Dapo,
        LossType::Grpo,
        LossType::DrGrpo,
        LossType::Bnpo,
    ] {
        let before = completion_logps(&model, &rollouts, 1.0).unwrap();
        let micro = rollout_loss(
            &model,
            &rollouts,
            &[1.0, -1.0],
            None,
            None,
            &settings(loss_type),
        )
        .unwrap();
        let grads = micro.surrogate.backward().unwrap();
        for (_, v) in &vars {
            let g = grads.get(v).unwrap();
            v.set(&(v.as_tensor() - (g * 1e-2).unwrap()).unwrap())
                .unwrap();
        }
        let after = completion_logps(&model, &rollouts, 1.0).unwrap();
        let sum = |x: &[f32]| x.iter().map(|v| *v as f64).sum::<f64>();
        assert!(
            sum(&after[0]) > sum(&before[0]),
            "{loss_type:?}: {:?} -> {:?}",
            before[0],
            after[0]
        );
        assert!(
            sum(&after[1]) < sum(&before[1]),
            "{loss_type:?}: {:?} -> {:?}",
            before[1],
            after[1]
        );
    }
}

/// Within this of TRL (absolute; f32 forward passes on both sides).
const TOLERANCE: f64 = 1e-5;

/// Fixed rollouts (tests/fixtures/grpo, made by scripts/make_grpo_fixture.py with TRL 1.16's own
/// GRPOTrainer): the advantages for scale_rewards group, batch and none, the reference's per-token
/// log-probs at the sampling temperature, and the loss and gradient norm of every loss_type, with
/// π_old = π and (completions reused by a later update) π_old = the reference.
#[test]
fn advantages_loss_and_gradient_equal_trl() {
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/grpo/expected.json").unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let eos = want["eos"].as_u64().unwrap() as u32;
    let max_len = want["max_completion_length"].as_u64().unwrap() as usize;
    let mut rollouts = Vec::new();
    for (p, group) in want["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want["completions"].as_array().unwrap())
    {
        for c in group.as_array().unwrap() {
            let completion = ids(c);
            rollouts.push(Rollout {
                prompt: ids(p),
                terminated: completion.last() == Some(&eos),
                completion,
            });
        }
    }
    let scores: Vec<f64> = want["scores"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g.as_array().unwrap().iter().map(|s| s.as_f64().unwrap()))
        .collect();
    let reference = Decoder::load(
        std::path::Path::new("tests/fixtures/nf4/qwen3"),
        &Device::Cpu,
    )
    .unwrap();
    let mut policy = Decoder::load(
        std::path::Path::new("tests/fixtures/mergekit/a"),
        &Device::Cpu,
    )
    .unwrap();
    let vars = policy.apply_tuning(&Tuning::Full, 0).unwrap();
    let temperature = want["temperature"].as_f64().unwrap();
    let ref_logps = completion_logps(&reference, &rollouts, temperature).unwrap();
    let mut worst = [0f64; 4];
    let mut checked = 0;
    for case in want["cases"].as_array().unwrap() {
        let scale = match case["scale_rewards"].as_str().unwrap() {
            "group" => ScaleRewards::Group,
            "batch" => ScaleRewards::Batch,
            _ => ScaleRewards::None,
        };
        let (adv, _) = ptl::train::grpo::advantages(&scores, 4, scale);
        for (a, w) in adv.iter().zip(case["advantages"].as_array().unwrap()) {
            worst[0] = worst[0].max((a - w.as_f64().unwrap()).abs());
        }
        for (got, row) in ref_logps
            .iter()
            .zip(case["ref_per_token_logps"].as_array().unwrap())
        {
            for (g, w) in got.iter().zip(row.as_array().unwrap()) {
                worst[1] = worst[1].max((*g as f64 - w.as_f64().unwrap()).abs());
            }
        }
        for (name, loss_type) in [
            ("dapo", LossType::Dapo),
            ("grpo", LossType::Grpo),
            ("dr_grpo", LossType::DrGrpo),
            ("bnpo", LossType::Bnpo),
        ] {
            let s = GrpoSettings {
                num_generations: 4,
                max_completion_length: max_len,
                temperature,
                beta: want["beta"].as_f64().unwrap(),
                epsilon_low: want["epsilon"].as_f64().unwrap(),
                epsilon_high: want["epsilon_high"].as_f64().unwrap(),
                loss_type,
                scale_rewards: scale,
                mask_truncated_completions: false,
                num_iterations: 1,
            };
            // π_old is π (one update per batch of completions), and, where the fixture has it,
            // the reference's log-probs (a later update on reused completions).
            let olds = [
                ("losses", None),
                ("losses_old_is_reference", Some(ref_logps.as_slice())),
            ];
            for (key, old) in olds {
                let Some(trl) = case[key].get(name) else {
                    continue;
                };
                let micro =
                    rollout_loss(&policy, &rollouts, &adv, Some(&ref_logps), old, &s).unwrap();
                let loss = micro.value / micro.weight;
                let grads = micro.surrogate.backward().unwrap();
                let norm = vars
                    .iter()
                    .map(|(_, v)| {
                        let g = grads
                            .get(v)
                            .unwrap()
                            .to_dtype(candle_core::DType::F64)
                            .unwrap();
                        g.sqr()
                            .unwrap()
                            .sum_all()
                            .unwrap()
                            .to_scalar::<f64>()
                            .unwrap()
                    })
                    .sum::<f64>()
                    .sqrt()
                    / micro.weight;
                worst[2] = worst[2].max((loss - trl["loss"].as_f64().unwrap()).abs());
                let rel = (norm - trl["grad_norm"].as_f64().unwrap()).abs()
                    / trl["grad_norm"].as_f64().unwrap();
                worst[3] = worst[3].max(rel);
                checked += usize::from(old.is_some());
            }
        }
    }
    assert_eq!(checked, 4, "the off-policy losses of the fixture");
    eprintln!("vs TRL: advantages {:.1e}, reference log-probs {:.1e}, loss {:.1e}, gradient norm {:.1e} (relative)", worst[0], worst[1], worst[2], worst[3]);
    assert!(
        worst[0] < TOLERANCE
            && worst[1] < TOLERANCE
            && worst[2] < TOLERANCE
            && worst[3] < TOLERANCE,
        "{worst:?}"
    );
}

#[macro_use]
mod common;

const STAGES: &str = concat!(
    tiny_sft_stages!(),
    r#"stage rl = grpo {
  model = tuned.model
  data = jsonl("data/quickstart/train.jsonl", format = "messages")
  rewards = [regex_match(pattern = "^1"), exact_match(field = "answer", weight = 0.5)]
  num_generations = 4
  batch_size = 32
  max_completion_length = 5
  lr = 1e-3
  max_steps = 16
  save_every = 3
  beta = 0.04
}
"#
);

/// The quickstart's tokenizer and data (and `extra` entries of pipelines/) with `pipeline` as p.ptl.
fn grpo_dir(name: &str, extra: &[&str], pipeline: &str) -> common::Dir {
    let entries: Vec<&str> = ["tokenizers/tiny-chat", "data/quickstart"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let d = common::pipeline_copy(&format!("grpo-{name}"), &entries);
    std::fs::write(d.0.join("p.ptl"), pipeline).unwrap();
    d
}

/// A short GRPO stage raises its reward (the mean over its last 4 steps above the first 4's), logs
/// TRL's metric names, and a run killed after step 5 resumes from its checkpoint at step 3 and ends
/// with the uninterrupted run's metrics and weights, bit for bit.
#[test]
fn a_grpo_stage_raises_its_reward_and_resumes_bit_identical() {
    let whole = grpo_dir("whole", &[], STAGES);
    let o = common::ptl(&whole.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::text(&o));
    let m = common::stage_metrics(&whole.0, "rl");
    assert_eq!(m.len(), 16);
    for name in [
        "reward",
        "reward_std",
        "rewards/regex_match/mean",
        "rewards/exact_match/mean",
        "frac_reward_zero_std",
        "kl",
        "completions/mean_length",
        "completions/clipped_ratio",
        "clip_ratio/region_mean",
    ] {
        assert!(m[0].get(name).is_some(), "{name} in {}", m[0]);
    }
    let mean = |r: &[serde_json::Value]| {
        r.iter().map(|x| x["reward"].as_f64().unwrap()).sum::<f64>() / r.len() as f64
    };
    let (first, last) = (mean(&m[..4]), mean(&m[12..]));
    eprintln!("reward over the first 4 steps {first:.3}, the last 4 {last:.3}");
    assert!(last > first + 0.1, "{first} -> {last}");

    let crashed = grpo_dir("crashed", &[], STAGES);
    // The stages before `rl` first, so that the crash lands in `rl`.
    common::crash_then_resume(
        &crashed.0,
        &["base", "tuned"],
        "crash_after_step:5",
        "rl: resuming from the checkpoint at step 3",
    );
    assert_eq!(common::stage_metrics(&crashed.0, "rl"), m);
    common::same_model(&crashed.0, &whole.0, "rl");
}

/// A reward model from an upstream `reward_model` stage scores the completions (in its own chat
/// template); its weighted score is the total reward when it is the only reward.
#[test]
fn a_reward_model_is_a_reward() {
    let stages = STAGES.split("stage rl = grpo").next().unwrap().to_string()
        + r#"stage judge = reward_model {
  model = tuned.model
  data = jsonl("data/preference/prefs.jsonl", format = "preference")
  max_steps = 4
  batch_size = 8
  max_len = 64
}

stage rl = grpo {
  model = tuned.model
  data = jsonl("data/quickstart/train.jsonl", format = "messages")
  reward_model = judge.model
  reward_model_weight = 0.5
  num_generations = 4
  batch_size = 16
  max_completion_length = 4
  lr = 1e-4
  max_steps = 2
}
"#;
    let d = grpo_dir("judge", &["data/preference"], &stages);
    let o = common::ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::text(&o));
    for m in common::stage_metrics(&d.0, "rl") {
        let judged = m["rewards/reward_model/mean"].as_f64().unwrap();
        assert!(judged != 0.0 && judged.is_finite(), "{m}");
        assert!(
            (m["reward"].as_f64().unwrap() - 0.5 * judged).abs() < 1e-9,
            "{m}"
        );
    }
}

/// `num_iterations = 2`: each step samples once and makes two updates on the same completions (the
/// second with ratios against the log-probs they were sampled with); the stage runs, logs one line
/// per step, and its reward rises as with one update.
#[test]
fn completions_are_reused_for_num_iterations_updates() {
    let stages = STAGES.replace(
        "  max_steps = 16\n  save_every = 3\n",
        "  max_steps = 12\n  num_iterations = 2\n",
    );
    let d = grpo_dir("iterations", &[], &stages);
    let o = common::ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::text(&o));
    let m = common::stage_metrics(&d.0, "rl");
    assert_eq!(m.len(), 12);
    let mean = |r: &[serde_json::Value]| {
        r.iter().map(|x| x["reward"].as_f64().unwrap()).sum::<f64>() / r.len() as f64
    };
    let (first, last) = (mean(&m[..4]), mean(&m[8..]));
    eprintln!("reward over the first 4 steps {first:.3}, the last 4 {last:.3}");
    assert!(last > first + 0.1, "{first} -> {last}");
    assert!(
        m.iter()
            .any(|x| x["clip_ratio/region_mean"].as_f64().unwrap() > 0.0),
        "the second update's ratios leave the clip range somewhere: {m:?}"
    );
}

/// `workers = 2`: each worker samples and trains on its own micro-batches of prompts (with the
/// seeds those micro-batches have in one process), and their gradients and reward metrics are
/// summed; the stage ends with the weights and metrics of one process accumulating the same
/// micro-batches, bit for bit, with one update per step and with `num_iterations = 2` (two updates
/// on the same completions).
#[test]
fn two_workers_equal_one_process_accumulating_their_micro_batches() {
    // STAGES's `rl` on 16 completions a micro-batch (4 prompts), 3 steps, with `fields`.
    let rl = |name: &str, fields: &str| {
        let body = STAGES.split("stage rl = grpo").nth(1).unwrap();
        format!("stage {name} = grpo{body}\n")
            .replace("batch_size = 32", "batch_size = 16")
            .replace(
                "max_steps = 16\n  save_every = 3\n",
                &format!("max_steps = 3\n  {fields}\n"),
            )
    };
    let stages = STAGES.split("stage rl = grpo").next().unwrap().to_string()
        + &rl("two", "workers = 2")
        + &rl("one", "grad_accum = 2")
        + &rl("two_reused", "workers = 2\n  num_iterations = 2")
        + &rl("one_reused", "grad_accum = 2\n  num_iterations = 2");
    let d = grpo_dir("workers", &[], &stages);
    // One micro-batch per worker: the ring's sum of two gradients is the one process's (a + b
    // either way), so the weights are the same bits.
    let pairs = [("two", "one"), ("two_reused", "one_reused")];
    for (ma, mb) in common::two_workers_as_one(&d.0, "tuned", &pairs) {
        for (x, y) in ma.iter().zip(&mb) {
            for name in [
                "reward",
                "rewards/exact_match/mean",
                "completions/mean_length",
            ] {
                assert_eq!(x[name], y[name], "{name}: {x} vs {y}");
            }
            assert_eq!(x["loss"], y["loss"], "{x} vs {y}");
        }
    }
}
