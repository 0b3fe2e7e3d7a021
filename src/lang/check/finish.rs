//! The last pass: settings defaults, semantic rules, unused overrides, cycles, and the pipeline itself.

use super::{Checker, Frame, StageSlot};
use crate::lang::diag::Diag;
use crate::lang::pipeline::{Pipeline, Stage};
use crate::lang::settings::Block;
use crate::lang::source::{Loc, Span};
use crate::lang::types::Type;
use crate::lang::value::{StageId, Value};
use crate::model::config::{ModelConfig, Shape};
use crate::stages::schema::{Default, StageView};
use petgraph::graph::{DiGraph, NodeIndex};
use std::path::Path;

/// The family and dimensions of a model value, where they can be known before anything runs: an
/// `hf_model` folder's config.json, or, for a stage's output model (a reward model too), the model the
/// stage starts from (its `model`, or the first of its `models`: training and merging keep the
/// weights' shapes; a reward model keeps its vocabulary and dimensions, though not its head). `None`
/// where no config is at hand (an `init` stage's model is written when it runs). `depth` bounds the
/// walk on a cyclic pipeline.
fn model_shape(stages: &[StageSlot], v: &Value, depth: usize) -> Option<Shape> {
    match v {
        Value::HfModel(p) => ModelConfig::load(&p.resolved).ok().map(|c| c.shape()),
        Value::Output {
            stage,
            ty: Type::Model | Type::RewardModel,
            ..
        } if depth > 0 => {
            let s = stages.get(*stage)?;
            let from = match (s.params.get("model"), s.params.get("models")) {
                (Some(m), _) if !matches!(m, Value::None) => m,
                (_, Some(Value::List(ms))) => ms.first()?,
                _ => return None,
            };
            model_shape(stages, from, depth - 1)
        }
        _ => None,
    }
}

impl Checker {
    pub(super) fn finish(&mut self, path: &Path) -> Option<Pipeline> {
        let root_file = self.modules[0].file;
        let frame = Frame {
            module: 0,
            file: root_file,
            locals: None,
            prefix: String::new(),
            origin: None,
        };
        let top = Loc {
            file: root_file,
            span: Span::new(0, 0),
        };
        for which in Block::ALL {
            if self.block_settings(which).seen.is_none() {
                self.apply_settings(&frame, which, None, top);
            }
        }
        self.fill_config_defaults();
        self.stage_rules();
        self.unused_overrides();
        self.cycles();
        if self.stages.is_empty() && !self.diags.has_errors() {
            let d = if self.modules[0].ast.items.is_empty() {
                let what = if self.sources.text(root_file).trim().is_empty() {
                    "is empty"
                } else {
                    "holds only comments"
                };
                Diag::error("ptl::empty", format!("the pipeline file {what}"))
                    .label(top, "nothing here")
                    .help("declare a stage: `stage sft = sft { model = hf_model(\"...\"), data = jsonl(\"...\") }`")
            } else {
                Diag::error("ptl::no_stages", "the pipeline declares no stages")
                    .label(top, "no `stage` in this file")
                    .help("a pipeline runs its stages: add `stage NAME = KIND { ... }`")
            };
            self.error(d);
        }
        if self.diags.has_errors() {
            return None;
        }
        let stages = self
            .stages
            .iter()
            .filter_map(|s| {
                let mut deps: Vec<StageId> = s.deps.iter().map(|(d, _)| *d).collect();
                deps.sort_unstable();
                deps.dedup();
                Some(Stage {
                    name: s.name.clone(),
                    kind: s.kind?,
                    params: s
                        .params
                        .iter()
                        .filter(|(_, v)| **v != Value::None)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    decl: s.decl,
                    locs: s.locs.clone(),
                    deps,
                })
            })
            .collect();
        Some(Pipeline {
            name: path
                .file_stem()
                .map_or("pipeline".into(), |s| s.to_string_lossy().into_owned()),
            file: path.to_path_buf(),
            config: self.block_settings(Block::Config).values.clone(),
            track: self.block_settings(Block::Track).values.clone(),
            store: self.block_settings(Block::Store).values.clone(),
            stages,
            datasets: self.modules[0]
                .globals
                .iter()
                .filter(|(_, b)| matches!(b.value, Value::Dataset { .. }))
                .map(|(n, b)| (n.clone(), b.value.clone()))
                .collect(),
        })
    }

    fn fill_config_defaults(&mut self) {
        for s in &mut self.stages {
            let Some(kind) = s.kind else { continue };
            for f in &kind.fields {
                if let Default::Config(key) = f.default {
                    if !s.params.contains_key(f.name) {
                        let config = &self.blocks[Block::Config as usize];
                        let v = config.values.get(key).cloned().unwrap_or(Value::None);
                        s.params.insert(f.name.to_string(), v);
                    }
                }
            }
        }
    }

    fn stage_rules(&mut self) {
        let tunings: Vec<Option<Value>> = self
            .stages
            .iter()
            .map(|s| s.params.get("tuning").cloned())
            .collect();
        let upstream = |id: StageId| tunings.get(id).cloned().flatten();
        let slots = &self.stages;
        let model_shape = |v: &Value| model_shape(slots, v, slots.len());
        let mut found = Vec::new();
        for s in &self.stages {
            let Some(kind) = s.kind else { continue };
            if s.params.is_empty() {
                continue;
            }
            let view = StageView {
                name: &s.name,
                kind,
                decl: s.decl,
                params: &s.params,
                locs: &s.locs,
                upstream_tuning: &upstream,
                model_shape: &model_shape,
            };
            for rule in &kind.rules {
                rule(&view, &mut found);
            }
        }
        for d in found {
            self.error(d);
        }
    }

    /// Stages that depend on themselves through other stages: every stage on the cycle is labeled.
    fn cycles(&mut self) {
        let mut g: DiGraph<StageId, ()> = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..self.stages.len()).map(|i| g.add_node(i)).collect();
        for (i, s) in self.stages.iter().enumerate() {
            for (d, _) in &s.deps {
                g.update_edge(nodes[i], nodes[*d], ());
            }
        }
        for scc in petgraph::algo::tarjan_scc(&g) {
            let mut members: Vec<StageId> = scc.iter().map(|n| g[*n]).collect();
            members.sort_unstable();
            let first = members[0];
            let self_loop = self.stages[first].deps.iter().any(|(d, _)| *d == first);
            if members.len() == 1 && !self_loop {
                continue;
            }
            // Walk the cycle from its first stage so the message reads in order.
            let mut order = vec![first];
            let mut labels = Vec::new();
            let mut cur = first;
            loop {
                let next = self.stages[cur]
                    .deps
                    .iter()
                    .find(|(d, _)| members.contains(d) && (!order.contains(d) || *d == first))
                    .copied();
                let Some((next, loc)) = next else { break };
                labels.push((
                    loc,
                    format!(
                        "`{}` uses `{}`",
                        self.stages[cur].name, self.stages[next].name
                    ),
                ));
                if next == first {
                    break;
                }
                order.push(next);
                cur = next;
            }
            let mut names: Vec<&str> = order
                .iter()
                .map(|i| self.stages[*i].name.as_str())
                .collect();
            names.push(&self.stages[first].name);
            let mut d = Diag::error(
                "ptl::cycle",
                format!(
                    "stages depend on each other in a cycle: {}",
                    names.join(" → ")
                ),
            );
            for (loc, text) in labels {
                d = d.label(loc, text);
            }
            self.error(d.help("a pipeline is a DAG: one of these references has to go"));
        }
    }
}
