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
        let micro =
            rollout_loss(&model, &rollouts, &[1.0, -1.0], None, &settings(loss_type)).unwrap();
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
/// log-probs at the sampling temperature, and the loss and gradient norm of every loss_type.
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
            };
            let micro = rollout_loss(&policy, &rollouts, &adv, Some(&ref_logps), &s).unwrap();
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
            let trl = &case["losses"][name];
            worst[2] = worst[2].max((loss - trl["loss"].as_f64().unwrap()).abs());
            let rel = (norm - trl["grad_norm"].as_f64().unwrap()).abs()
                / trl["grad_norm"].as_f64().unwrap();
            worst[3] = worst[3].max(rel);
        }
    }
    eprintln!("vs TRL: advantages {:.1e}, reference log-probs {:.1e}, loss {:.1e}, gradient norm {:.1e} (relative)", worst[0], worst[1], worst[2], worst[3]);
    assert!(
        worst[0] < TOLERANCE
            && worst[1] < TOLERANCE
            && worst[2] < TOLERANCE
            && worst[3] < TOLERANCE,
        "{worst:?}"
    );
}
