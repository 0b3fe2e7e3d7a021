//! The plan: the checked pipeline as a DAG in topological order, each stage `cached`, `run` (with
//! the reasons) or `blocked`, decided from content hashes, the store and the lock file.

pub mod compute;
pub mod graph;
pub mod inputs;
pub mod key;
pub mod lockfile;

use crate::lang::pipeline::Pipeline;
use crate::lang::value::StageId;
use crate::store::hash::HashCache;
use crate::store::Store;
use key::{stage_key, KeyError, StageKey};
use lockfile::{LockFile, LockedStage};
use serde_json::{json, Value as Json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Cached,
    Run,
    Blocked,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Cached => "cached",
            Status::Run => "run",
            Status::Blocked => "blocked",
        }
    }
}

#[derive(Clone, Debug)]
pub struct StagePlan {
    pub status: Status,
    pub reasons: Vec<String>,
    /// Known when every input's content is known (not when an upstream stage has to run first).
    pub key: Option<StageKey>,
    /// `cached` in the remote store only: a run downloads it.
    pub remote: bool,
}

impl StagePlan {
    /// `cached`, `cached (remote)`, `run` or `blocked`.
    pub fn status_text(&self) -> &'static str {
        match (self.status, self.remote) {
            (Status::Cached, true) => "cached (remote)",
            (status, _) => status.name(),
        }
    }
}

/// Remote lookups while planning: the first failure is reported once and the remote is not asked
/// again (a store that is down costs one timeout, not one per stage).
struct RemoteLookup<'a> {
    store: &'a Store,
    down: Option<String>,
}

impl RemoteLookup<'_> {
    /// The remote entry's manifest for `key`; a failure becomes a reason of the stage that runs.
    fn find(&mut self, key: &str, reasons: &mut Vec<String>) -> Option<crate::store::Manifest> {
        let remote = self.store.remote.as_ref()?;
        if let Some(down) = &self.down {
            reasons.push(format!("remote store not used: {down}"));
            return None;
        }
        match remote.manifest(key) {
            Ok(m) => m,
            Err(e) => {
                let why = format!("{}: {e}", remote.url());
                reasons.push(format!("remote store not used: {why}"));
                self.down = Some(why);
                None
            }
        }
    }
}

pub struct Plan {
    /// Stage ids in topological order (ties in declaration order).
    pub order: Vec<StageId>,
    pub stages: Vec<StagePlan>,
    /// The device and dtype of the `config` block.
    pub compute: compute::Compute,
    /// Each stage's device and dtype (the config's unless the stage sets its own; part of its key).
    pub computes: Vec<compute::Compute>,
}

/// Stages in dependency order; among ready stages, the one declared first.
pub fn topo_order(p: &Pipeline) -> Vec<StageId> {
    let n = p.stages.len();
    let mut indegree: Vec<usize> = p.stages.iter().map(|s| s.deps.len()).collect();
    let mut order = Vec::with_capacity(n);
    let mut done = vec![false; n];
    while order.len() < n {
        let Some(next) = (0..n).find(|i| !done[*i] && indegree[*i] == 0) else {
            break;
        };
        done[next] = true;
        order.push(next);
        for (j, s) in p.stages.iter().enumerate() {
            if s.deps.contains(&next) {
                indegree[j] -= 1;
            }
        }
    }
    order
}

/// Compact rendering of a parameter for reasons: strings quoted, numbers and lists as JSON.
fn show(v: &Json) -> String {
    match v {
        Json::Null => "(unset)".into(),
        Json::Object(o) if o.contains_key("stage") && o.contains_key("output") => {
            format!(
                "{}.{}",
                o["stage"].as_str().unwrap_or("?"),
                o["output"].as_str().unwrap_or("?")
            )
        }
        other => other.to_string(),
    }
}

/// Why a stage whose entry is in the store must run again: its kind wrote outside the store too, and
/// that copy is gone or changed (`export`'s destination).
pub fn stale_outside(p: &Pipeline, id: StageId, store: &Store, key: &str) -> Option<String> {
    let stage = &p.stages[id];
    let check = stage.kind.outside?;
    let out = store.entry_dir(key).join("out");
    check(&crate::stages::schema::OutsideView {
        params: &stage.params,
        base_dir: p.dir(),
        out: &out,
    })
}

/// Why a stage of `kind` cannot run in this build, if it cannot: its kind has no execution yet.
pub fn cannot_run(kind: &crate::stages::schema::Kind) -> Option<String> {
    kind.run.is_none().then(|| {
        format!(
            "stage kind {} cannot run yet: its training is not built in this version of ptl",
            kind.name
        )
    })
}

/// Why a stage whose key is known must run, compared with what the lock file recorded.
pub fn reasons(
    p: &Pipeline,
    id: StageId,
    key: &StageKey,
    locked: Option<&LockedStage>,
    in_store: bool,
) -> Vec<String> {
    let stage = &p.stages[id];
    let Some(l) = locked else {
        return vec!["new".into()];
    };
    let mut out = Vec::new();
    if l.kind != stage.kind.name {
        out.push(format!("kind changed {} → {}", l.kind, stage.kind.name));
    } else if l.kind_version != stage.kind.version {
        out.push(format!("implementation of {} changed", stage.kind.name));
    }
    let now = p.params_json(id);
    let empty = serde_json::Map::new();
    let (a, b) = (
        l.params.as_object().unwrap_or(&empty),
        now.as_object().unwrap_or(&empty),
    );
    let mut fields: Vec<&String> = a.keys().chain(b.keys()).collect();
    fields.sort();
    fields.dedup();
    for f in fields {
        let (old, new) = (
            a.get(f).unwrap_or(&Json::Null),
            b.get(f).unwrap_or(&Json::Null),
        );
        if old != new {
            out.push(format!("param {f} changed {} → {}", show(old), show(new)));
        }
    }
    for (label, hash) in &key.inputs {
        match l.inputs.get(label) {
            Some(h) if h == hash => {}
            Some(_) => out.push(format!("input {label} changed")),
            None => {}
        }
    }
    if out.is_empty() {
        if l.key == key.key && !in_store {
            out.push("outputs not in the store".into());
        } else if l.key != key.key {
            out.push("settings changed (device or dtype)".into());
        }
    }
    out
}

impl Plan {
    pub fn make(
        p: &Pipeline,
        store: &Store,
        cache: &mut HashCache,
        lock: &LockFile,
    ) -> Result<Plan, String> {
        let order = topo_order(p);
        let compute = compute::Compute::from_config(&p.config)?;
        let computes = compute.per_stage(p)?;
        let mut stages: Vec<StagePlan> = vec![
            StagePlan {
                status: Status::Blocked,
                reasons: vec![],
                key: None,
                remote: false,
            };
            p.stages.len()
        ];
        // Manifests of entries found in the remote store only (their outputs key the downstream).
        let mut remote_manifests: Vec<Option<crate::store::Manifest>> = vec![None; p.stages.len()];
        let mut lookup = RemoteLookup { store, down: None };
        for &id in &order {
            let stage = &p.stages[id];
            let blocked_by = stage
                .deps
                .iter()
                .find(|d| stages[**d].status == Status::Blocked);
            if let Some(b) = blocked_by {
                stages[id].reasons = vec![format!("upstream {} is blocked", p.stages[*b].name)];
                continue;
            }
            let upstream = |s: StageId, output: &str| -> Option<String> {
                let k = stages[s].key.as_ref()?;
                if stages[s].status != Status::Cached {
                    return None;
                }
                if let Some(m) = &remote_manifests[s] {
                    return m.outputs.get(output).cloned();
                }
                store.manifest(&k.key).ok()?.outputs.get(output).cloned()
            };
            let key = match stage_key(p, id, &computes[id], cache, &upstream) {
                Ok(k) => Some(k),
                Err(KeyError::Upstream(_)) => None,
                Err(KeyError::Input(label, e)) => {
                    return Err(format!(
                        "stage `{}`: cannot read input {label}: {e}",
                        stage.name
                    ))
                }
            };
            // Upstream outputs in the store, for kinds that say what they will reuse.
            let cached_keys: Vec<Option<String>> = match stage.kind.plan_note {
                Some(_) => stages
                    .iter()
                    .map(|s| match (&s.key, s.status) {
                        (Some(k), Status::Cached) if !s.remote => Some(k.key.clone()),
                        _ => None,
                    })
                    .collect(),
                None => vec![],
            };
            let plan = &mut stages[id];
            match key {
                Some(k) if store.has(&k.key) => match stale_outside(p, id, store, &k.key) {
                    Some(why) => {
                        plan.status = Status::Run;
                        plan.reasons = vec![why];
                        plan.key = Some(k);
                    }
                    None => {
                        plan.status = Status::Cached;
                        plan.key = Some(k);
                    }
                },
                Some(k) => {
                    // In the remote store (never for a kind that also writes outside the store).
                    let mut remote_note = Vec::new();
                    let found = match stage.kind.outside {
                        None => lookup.find(&k.key, &mut remote_note),
                        Some(_) => None,
                    };
                    if let Some(m) = found {
                        plan.status = Status::Cached;
                        plan.remote = true;
                        plan.key = Some(k);
                        remote_manifests[id] = Some(m);
                        continue;
                    }
                    plan.reasons = reasons(p, id, &k, lock.stages.get(&stage.name), false);
                    plan.reasons.extend(remote_note);
                    // A stage killed mid-run left a checkpoint under this very key: say so.
                    if let Some(step) = store.checkpoint_step(&k.key) {
                        plan.reasons
                            .push(format!("resumes from its checkpoint at step {step}"));
                    }
                    // What the kind will reuse from the store (reference log-probs).
                    if let Some(note) = stage.kind.plan_note {
                        let inputs = inputs::stage_inputs(&stage.params, store, &cached_keys);
                        let view = crate::stages::schema::PlanView {
                            params: &stage.params,
                            inputs: &inputs,
                            store,
                        };
                        plan.reasons.extend(note(&view));
                    }
                    plan.status = Status::Run;
                    plan.key = Some(k);
                }
                None => {
                    let upstream: Vec<String> = stage
                        .deps
                        .iter()
                        .filter(|d| stages[**d].status == Status::Run)
                        .map(|d| format!("upstream {} will rerun", p.stages[*d].name))
                        .collect();
                    let plan = &mut stages[id];
                    plan.status = Status::Run;
                    plan.reasons = upstream;
                }
            }
            let plan = &mut stages[id];
            if let (Status::Run, Some(why)) = (plan.status, cannot_run(stage.kind)) {
                plan.status = Status::Blocked;
                plan.reasons = vec![why];
            }
        }
        Ok(Plan {
            order,
            stages,
            compute,
            computes,
        })
    }

    /// `{"stages": [{"name", "kind", "status", "reasons", "key", "depends_on"}]}` in topological order.
    pub fn to_json(&self, p: &Pipeline) -> Json {
        let stages: Vec<Json> = self
            .order
            .iter()
            .map(|&id| {
                let s = &self.stages[id];
                let mut stage = json!({
                    "name": p.stages[id].name,
                    "kind": p.stages[id].kind.name,
                    "status": s.status.name(),
                    "compute": self.computes[id].describe(),
                    "reasons": s.reasons,
                    "key": s.key.as_ref().map(|k| k.key.clone()),
                    "depends_on": p.stages[id].deps.iter().map(|d| p.stages[*d].name.clone()).collect::<Vec<_>>(),
                });
                if s.remote {
                    stage["remote"] = json!(true);
                }
                if p.stages[id].workers() > 1 {
                    stage["workers"] = json!(p.stages[id].workers());
                }
                stage
            })
            .collect();
        let mut plan =
            json!({ "pipeline": p.name, "compute": self.compute.describe(), "stages": stages });
        if let Some(r) = p.ray_executor() {
            plan["executor"] = r.to_json();
        }
        plan
    }
}
