//! The executor's decisions as a pure state machine: which stage may start, which are cached, which are
//! blocked by a failed upstream or skipped by `--only` / `--from`, what `--keep-going` and a stop allow.
//! `Run::run` asks it and applies the answers (keys, the store, threads); the tests drive it with tables.

use super::outcome::{Failure, Outcome};

/// What the scheduler knows of a stage besides its state.
#[derive(Clone, Debug)]
pub struct StageSpec {
    pub name: String,
    /// Upstream stages.
    pub deps: Vec<usize>,
    /// Selected by `--only` / `--from` (all are, without them).
    pub selected: bool,
    /// Why it cannot run in this build or with this run's settings (its kind is not built, its
    /// dtype cannot train yet); `None` when it can.
    pub cannot_run: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting,
    Running,
    Done,
    /// Settled without completing: failed, blocked, skipped or cancelled.
    Settled(Outcome),
}

/// What to do about one stage now.
#[derive(Debug, PartialEq)]
pub enum Consider {
    /// Nothing yet (upstream not done, or already decided).
    Nothing,
    /// Settled now with this outcome (blocked or skipped because of its upstream): report it.
    Settled(Outcome),
    /// Every upstream is done: compute the stage's key, then call [`Scheduler::keyed`].
    NeedKey,
}

/// What to do with a stage whose key is known.
#[derive(Debug, PartialEq)]
pub enum Keyed {
    /// In the store: done.
    Cached,
    /// Start it now.
    Start,
    /// All job slots are busy: ask again after a running stage finishes.
    Wait,
    /// Settled without running (skipped or blocked): report it.
    Settled(Outcome),
}

pub struct Scheduler {
    specs: Vec<StageSpec>,
    /// Topological order.
    order: Vec<usize>,
    state: Vec<State>,
    jobs: usize,
    keep_going: bool,
    running: usize,
    /// A stage failed and `--keep-going` is off: no new stage starts.
    halted: bool,
    /// A stop was requested (Ctrl-C, watch mode): no new stage starts.
    stopped: bool,
}

impl Scheduler {
    pub fn new(specs: Vec<StageSpec>, order: Vec<usize>, jobs: usize, keep_going: bool) -> Self {
        let n = specs.len();
        Scheduler {
            specs,
            order,
            state: vec![State::Waiting; n],
            jobs: jobs.max(1),
            keep_going,
            running: 0,
            halted: false,
            stopped: false,
        }
    }

    pub fn order(&self) -> Vec<usize> {
        self.order.clone()
    }

    pub fn running(&self) -> usize {
        self.running
    }

    /// No new stage starts from now on.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    fn settle(&mut self, id: usize, outcome: Outcome) -> Outcome {
        self.state[id] = State::Settled(outcome.clone());
        outcome
    }

    /// What to do about stage `id` given its upstream's states.
    pub fn consider(&mut self, id: usize) -> Consider {
        if self.state[id] != State::Waiting {
            return Consider::Nothing;
        }
        let deps = self.specs[id].deps.clone();
        let chosen = self.specs[id].selected;
        let skipped = deps
            .iter()
            .find(|d| matches!(self.state[**d], State::Settled(Outcome::Skipped(_))));
        if let Some(&d) = skipped {
            let upstream = &self.specs[d].name;
            let outcome = if chosen {
                Outcome::Blocked(format!(
                    "upstream {upstream} is not built: run it first, or select it too"
                ))
            } else {
                Outcome::Skipped(format!(
                    "not selected, and upstream {upstream} is not built"
                ))
            };
            return Consider::Settled(self.settle(id, outcome));
        }
        let unfinished = deps
            .iter()
            .find(|d| matches!(self.state[**d], State::Settled(_)));
        if let Some(&d) = unfinished {
            let why = format!("upstream {} did not finish", self.specs[d].name);
            return Consider::Settled(self.settle(id, Outcome::Blocked(why)));
        }
        if deps.iter().all(|d| self.state[*d] == State::Done) {
            Consider::NeedKey
        } else {
            Consider::Nothing
        }
    }

    /// Stage `id`'s key is known; `cached`: the store has its entry; `in_remote`: the remote store
    /// has it (a stage not selected is then started, to download it).
    pub fn keyed(&mut self, id: usize, cached: bool, in_remote: bool) -> Keyed {
        if cached {
            self.state[id] = State::Done;
            return Keyed::Cached;
        }
        let spec = &self.specs[id];
        let why = if !spec.selected && !in_remote {
            Some(Outcome::Skipped(
                "not built, and not selected by --only/--from".into(),
            ))
        } else if let Some(why) = &spec.cannot_run {
            Some(Outcome::Blocked(why.clone()))
        } else if self.stopped {
            Some(Outcome::Blocked("not started: the run was stopped".into()))
        } else if self.halted {
            Some(Outcome::Blocked(
                "not started: an earlier stage failed (use --keep-going to go on)".into(),
            ))
        } else {
            None
        };
        if let Some(outcome) = why {
            return Keyed::Settled(self.settle(id, outcome));
        }
        if self.running >= self.jobs {
            return Keyed::Wait;
        }
        self.running += 1;
        self.state[id] = State::Running;
        Keyed::Start
    }

    /// Stage `id` failed before it could run (its key, `--locked`).
    pub fn fail(&mut self, id: usize, failure: Failure) -> Outcome {
        self.halted |= !self.keep_going;
        self.settle(id, Outcome::Failed(failure))
    }

    /// A started stage ended with `outcome` (`Ran` or `CachedByOther` count as done).
    pub fn finished(&mut self, id: usize, outcome: Outcome) {
        self.running = self.running.saturating_sub(1);
        match outcome {
            Outcome::Ran(_) | Outcome::CachedByOther | Outcome::FromRemote(_) | Outcome::Cached => {
                self.state[id] = State::Done
            }
            Outcome::Failed(_) => {
                self.halted |= !self.keep_going;
                self.state[id] = State::Settled(outcome);
            }
            other => self.state[id] = State::Settled(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stage of a test pipeline: name, upstream names, and what happens when it runs.
    struct Case<'a> {
        stages: &'a [(&'a str, &'a [&'a str])],
        cached: &'a [&'a str],
        fails: &'a [&'a str],
        /// Not runnable in this version.
        unrunnable: &'a [&'a str],
        /// `Some`: only these are selected.
        selected: Option<&'a [&'a str]>,
        keep_going: bool,
        jobs: usize,
        /// Stop the run when this stage starts (it is then cancelled).
        stop_at: Option<&'a str>,
    }

    impl Default for Case<'_> {
        fn default() -> Self {
            Case {
                stages: &[],
                cached: &[],
                fails: &[],
                unrunnable: &[],
                selected: None,
                keep_going: false,
                jobs: 1,
                stop_at: None,
            }
        }
    }

    /// Drives the scheduler as `Run::run` does, with stages that finish in the order they started;
    /// returns each stage's outcome as a short word, and the most stages running at once.
    fn drive(c: &Case) -> (Vec<(String, String)>, usize) {
        let index = |n: &str| c.stages.iter().position(|(s, _)| *s == n).unwrap();
        let specs: Vec<StageSpec> = c
            .stages
            .iter()
            .map(|(name, deps)| StageSpec {
                name: name.to_string(),
                deps: deps.iter().map(|d| index(d)).collect(),
                selected: c.selected.is_none_or(|s| s.contains(name)),
                cannot_run: c
                    .unrunnable
                    .contains(name)
                    .then(|| "stage kind k cannot run yet".to_string()),
            })
            .collect();
        let mut s = Scheduler::new(specs, (0..c.stages.len()).collect(), c.jobs, c.keep_going);
        let mut outcomes: Vec<Option<Outcome>> = vec![None; c.stages.len()];
        let mut queue: std::collections::VecDeque<usize> = Default::default();
        let mut most = 0;
        loop {
            let mut progressed = false;
            for id in s.order() {
                match s.consider(id) {
                    Consider::Nothing => {}
                    Consider::Settled(o) => {
                        outcomes[id] = Some(o);
                        progressed = true;
                    }
                    Consider::NeedKey => {
                        progressed = true;
                        let name = c.stages[id].0;
                        match s.keyed(id, c.cached.contains(&name), false) {
                            Keyed::Cached => outcomes[id] = Some(Outcome::Cached),
                            Keyed::Settled(o) => outcomes[id] = Some(o),
                            Keyed::Wait => {}
                            Keyed::Start => {
                                queue.push_back(id);
                                most = most.max(s.running());
                                if c.stop_at == Some(name) {
                                    s.stop();
                                }
                            }
                        }
                    }
                }
            }
            if s.running() == 0 && !progressed {
                break;
            }
            let Some(id) = queue.pop_front() else {
                continue;
            };
            let name = c.stages[id].0;
            let outcome = if c.stop_at == Some(name) {
                Outcome::Cancelled
            } else if c.fails.contains(&name) {
                Outcome::Failed(Failure::plain("boom"))
            } else {
                Outcome::Ran(1.0)
            };
            outcomes[id] = Some(outcome.clone());
            s.finished(id, outcome);
        }
        let words = c
            .stages
            .iter()
            .zip(outcomes)
            .map(|((name, _), o)| {
                let word = match o {
                    None => "none".to_string(),
                    Some(Outcome::Cached) => "cached".into(),
                    Some(Outcome::CachedByOther) => "cached-by-other".into(),
                    Some(Outcome::FromRemote(_)) => "from-remote".into(),
                    Some(Outcome::Ran(_)) => "ran".into(),
                    Some(Outcome::Failed(_)) => "failed".into(),
                    Some(Outcome::Cancelled) => "cancelled".into(),
                    Some(Outcome::Blocked(why)) => format!("blocked: {why}"),
                    Some(Outcome::Skipped(why)) => format!("skipped: {why}"),
                };
                (name.to_string(), word)
            })
            .collect();
        (words, most)
    }

    fn expect(c: Case, want: &[(&str, &str)]) {
        let (got, _) = drive(&c);
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    const DIAMOND: &[(&str, &[&str])] =
        &[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])];

    #[test]
    fn dependencies_run_in_order_and_cached_stages_are_not_run() {
        expect(
            Case {
                stages: DIAMOND,
                cached: &["a", "c"],
                ..Case::default()
            },
            &[("a", "cached"), ("b", "ran"), ("c", "cached"), ("d", "ran")],
        );
    }

    #[test]
    fn a_failure_blocks_its_downstream_and_stops_new_starts() {
        expect(
            Case {
                stages: DIAMOND,
                fails: &["b"],
                ..Case::default()
            },
            &[
                ("a", "ran"),
                ("b", "failed"),
                (
                    "c",
                    "blocked: not started: an earlier stage failed (use --keep-going to go on)",
                ),
                ("d", "blocked: upstream b did not finish"),
            ],
        );
    }

    #[test]
    fn keep_going_finishes_what_does_not_depend_on_the_failure() {
        expect(
            Case {
                stages: DIAMOND,
                fails: &["b"],
                keep_going: true,
                ..Case::default()
            },
            &[
                ("a", "ran"),
                ("b", "failed"),
                ("c", "ran"),
                ("d", "blocked: upstream b did not finish"),
            ],
        );
    }

    #[test]
    fn a_cached_stage_is_used_even_after_a_failure() {
        expect(
            Case {
                stages: &[("a", &[]), ("b", &[]), ("c", &["b"])],
                fails: &["a"],
                cached: &["b", "c"],
                ..Case::default()
            },
            &[("a", "failed"), ("b", "cached"), ("c", "cached")],
        );
    }

    #[test]
    fn only_and_from_skip_what_is_not_selected_and_not_built() {
        // --only b: a is built, c is not selected.
        expect(
            Case {
                stages: &[("a", &[]), ("b", &["a"]), ("c", &["b"])],
                cached: &["a"],
                selected: Some(&["b"]),
                ..Case::default()
            },
            &[
                ("a", "cached"),
                ("b", "ran"),
                ("c", "skipped: not built, and not selected by --only/--from"),
            ],
        );
        // --only b with a not built: b is blocked, and says how to get on.
        expect(
            Case {
                stages: &[("a", &[]), ("b", &["a"]), ("c", &["b"])],
                selected: Some(&["b"]),
                ..Case::default()
            },
            &[
                ("a", "skipped: not built, and not selected by --only/--from"),
                (
                    "b",
                    "blocked: upstream a is not built: run it first, or select it too",
                ),
                ("c", "blocked: upstream b did not finish"),
            ],
        );
    }

    #[test]
    fn kinds_that_cannot_run_are_blocked_unless_cached() {
        expect(
            Case {
                stages: &[("a", &[]), ("b", &["a"]), ("c", &[])],
                unrunnable: &["a", "c"],
                cached: &["c"],
                ..Case::default()
            },
            &[
                ("a", "blocked: stage kind k cannot run yet"),
                ("b", "blocked: upstream a did not finish"),
                ("c", "cached"),
            ],
        );
    }

    #[test]
    fn a_stop_cancels_the_running_stage_and_starts_nothing_new() {
        expect(
            Case {
                stages: DIAMOND,
                stop_at: Some("b"),
                ..Case::default()
            },
            &[
                ("a", "ran"),
                ("b", "cancelled"),
                ("c", "blocked: not started: the run was stopped"),
                ("d", "blocked: upstream c did not finish"),
            ],
        );
    }

    #[test]
    fn jobs_bound_how_many_run_at_once() {
        let wide: &[(&str, &[&str])] = &[("a", &[]), ("b", &[]), ("c", &[]), ("d", &[])];
        for jobs in [1, 2, 4] {
            let (got, most) = drive(&Case {
                stages: wide,
                jobs,
                ..Case::default()
            });
            assert_eq!(most, jobs, "{got:?}");
            assert!(got.iter().all(|(_, w)| w == "ran"), "{got:?}");
        }
    }

    #[test]
    fn a_key_failure_counts_as_a_failure() {
        let specs = vec![
            StageSpec {
                name: "a".into(),
                deps: vec![],
                selected: true,
                cannot_run: None,
            },
            StageSpec {
                name: "b".into(),
                deps: vec![0],
                selected: true,
                cannot_run: None,
            },
        ];
        let mut s = Scheduler::new(specs, vec![0, 1], 1, false);
        assert_eq!(s.consider(0), Consider::NeedKey);
        s.fail(0, Failure::plain("cannot read input"));
        assert_eq!(
            s.consider(1),
            Consider::Settled(Outcome::Blocked("upstream a did not finish".into()))
        );
    }
}
