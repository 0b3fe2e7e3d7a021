//! Parse + check of a generated 2,000-stage pipeline (goal: well under 50 ms). Run with
//! `cargo bench --bench check`; docs/performance.md records the figures.

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::PathBuf;
use std::time::Duration;

/// A pipeline of 500 SFT → DPO → merge → eval chains (2,000 stages, 3,000 edges) and its data.
fn generate() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ptl-bench-check-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("models/base")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("models/base/config.json"), "{}").unwrap();
    std::fs::write(dir.join("data/chat.jsonl"), "{\"messages\": []}\n").unwrap();
    std::fs::write(
        dir.join("data/prefs.jsonl"),
        "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n",
    )
    .unwrap();
    let mut text = String::from(
        "config {\n  seed = 1\n}\n\nlet base = hf_model(\"models/base\")\nlet chat = jsonl(\"data/chat.jsonl\", format = \"messages\")\nlet prefs = jsonl(\"data/prefs.jsonl\", format = \"preference\")\n",
    );
    for i in 0..500 {
        text.push_str(&format!(
            "
stage sft{i} = sft {{
  model = base
  data = chat
  tuning = lora(rank = {r}, alpha = {a})
  lr = 2e-4
  epochs = 2
}}
stage dpo{i} = dpo {{
  model = sft{i}.model
  data = prefs
  tuning = lora(rank = 8)
  beta = 0.{b}
}}
stage merged{i} = merge {{
  model = dpo{i}.model
}}
stage eval{i} = eval {{
  models = [base, sft{i}.model, merged{i}.model]
  data = prefs
}}
",
            r = 4 + i % 8,
            a = 8 + i % 16,
            b = 1 + i % 9
        ));
    }
    let path = dir.join("big.ptl");
    std::fs::write(&path, text).unwrap();
    path
}

fn bench(c: &mut Criterion) {
    let path = generate();
    let checked = ptl::lang::check::check_file(&path, &[]);
    let Some(pipeline) = checked.pipeline else {
        panic!(
            "{}",
            ptl::lang::diag::render(&checked.diags, &checked.sources, false)
        );
    };
    assert_eq!(pipeline.stages.len(), 2000);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut g = c.benchmark_group("check");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.bench_function("parse_2000_stages", |b| {
        b.iter(|| ptl::lang::parse::parse(0, &text).unwrap())
    });
    g.bench_function("parse_and_check_2000_stages", |b| {
        b.iter(|| ptl::lang::check::check_file(&path, &[]).pipeline.unwrap())
    });
    g.finish();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

criterion_group!(benches, bench);
criterion_main!(benches);
