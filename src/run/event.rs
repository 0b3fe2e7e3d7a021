//! What runs and watch mode tell their caller, as one type: `ptl run` renders it as console lines or
//! (`--format json`) one JSON object per line, `ptl watch --format json` as the same objects, and later
//! consumers (a server's logs) the same way. The JSON names and fields are documented in docs/engine.md.

use super::outcome::Outcome;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The plan of a (re)run: `pipeline` and `stages`, as `ptl plan --format json`.
    Plan {
        #[serde(flatten)]
        plan: serde_json::Value,
    },
    /// Where a run's tracking goes (one event per sink, before the first stage runs).
    Tracking {
        to: String,
    },
    StageStarted {
        stage: String,
    },
    /// `step` of `total` done; `note` says how it goes (loss and speed while training, may be empty).
    StageProgress {
        stage: String,
        step: u64,
        total: u64,
        note: String,
    },
    /// A line of a stage's own output.
    StageLog {
        stage: String,
        line: String,
    },
    StageFinished {
        stage: String,
        status: Status,
        /// Wall-clock seconds (`ran` only).
        #[serde(skip_serializing_if = "Option::is_none")]
        seconds: Option<f64>,
        /// Why it failed, was blocked or skipped.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// A failure's diagnostic code and the stage field it points at.
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<&'static str>,
        /// Cached because another run on the same store computed it meanwhile.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        by_another_run: bool,
        /// Cached in the remote store, downloaded in `seconds`.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        from_remote: bool,
    },
    /// Stopped on request; `forced`: it did not stop within watch's grace period.
    StageCancelled {
        stage: String,
        forced: bool,
    },
    /// The pipeline has errors (as `ptl check --format json`).
    Diagnostics {
        diagnostics: Vec<crate::lang::diag::JsonDiag>,
    },
    /// Watch mode: these files changed.
    Change {
        paths: Vec<String>,
    },
    /// Watch mode: the current run finished; watching.
    Idle,
    /// Watch mode: stopped by Ctrl-C.
    Stopped,
    /// The run could not go on (the store could not be opened, an input could not be read).
    Error {
        message: String,
    },
    /// The end of `ptl run`: how many stages ended which way.
    Summary {
        cached: usize,
        ran: usize,
        failed: usize,
        blocked: usize,
        cancelled: usize,
        not_selected: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ran,
    Cached,
    Failed,
    Blocked,
    Skipped,
}

impl Event {
    /// The event that reports a stage's outcome.
    pub fn finished(stage: &str, outcome: &Outcome) -> Event {
        let stage = stage.to_string();
        let done = |status, error: Option<&String>| Event::StageFinished {
            stage: stage.clone(),
            status,
            seconds: None,
            error: error.cloned(),
            code: None,
            field: None,
            by_another_run: false,
            from_remote: false,
        };
        let mut event = match outcome {
            Outcome::Cancelled => {
                return Event::StageCancelled {
                    stage,
                    forced: false,
                }
            }
            Outcome::Ran(_) => done(Status::Ran, None),
            Outcome::Cached | Outcome::CachedByOther | Outcome::FromRemote(_) => {
                done(Status::Cached, None)
            }
            Outcome::Failed(f) => done(Status::Failed, Some(&f.message)),
            Outcome::Blocked(why) => done(Status::Blocked, Some(why)),
            Outcome::Skipped(why) => done(Status::Skipped, Some(why)),
        };
        if let Event::StageFinished {
            seconds,
            code,
            field,
            by_another_run,
            from_remote,
            ..
        } = &mut event
        {
            match outcome {
                Outcome::Ran(secs) => *seconds = Some(*secs),
                Outcome::FromRemote(secs) => {
                    *seconds = Some(*secs);
                    *from_remote = true;
                }
                Outcome::CachedByOther => *by_another_run = true,
                Outcome::Failed(f) => {
                    *code = Some(f.code);
                    *field = f.field;
                }
                _ => {}
            }
        }
        event
    }

    /// The summary event of a finished run.
    pub fn summary(outcomes: &[(String, Outcome)]) -> Event {
        let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|(_, o)| f(o)).count();
        Event::Summary {
            cached: count(|o| {
                matches!(
                    o,
                    Outcome::Cached | Outcome::CachedByOther | Outcome::FromRemote(_)
                )
            }),
            ran: count(|o| matches!(o, Outcome::Ran(_))),
            failed: count(|o| matches!(o, Outcome::Failed(_))),
            blocked: count(|o| matches!(o, Outcome::Blocked(_))),
            cancelled: count(|o| matches!(o, Outcome::Cancelled)),
            not_selected: count(|o| matches!(o, Outcome::Skipped(_))),
        }
    }

    /// The stage the event is about, if it is about one.
    pub fn stage(&self) -> Option<&str> {
        match self {
            Event::StageStarted { stage }
            | Event::StageProgress { stage, .. }
            | Event::StageLog { stage, .. }
            | Event::StageFinished { stage, .. }
            | Event::StageCancelled { stage, .. } => Some(stage),
            _ => None,
        }
    }

    /// A stage's state in a status table (watch mode's screen): `running 3/10  loss …`, `done in 1.2 s`.
    pub fn status(&self) -> Option<String> {
        Some(match self {
            Event::StageStarted { .. } => "running".into(),
            Event::StageProgress {
                step, total, note, ..
            } => {
                let sep = if note.is_empty() { "" } else { "  " };
                format!("running {step}/{total}{sep}{note}")
            }
            Event::StageCancelled { .. } => "cancelled".into(),
            Event::StageFinished {
                status,
                seconds,
                error,
                from_remote,
                ..
            } => {
                let why = error.as_deref().unwrap_or_default();
                match status {
                    Status::Ran => format!("done in {:.1} s", seconds.unwrap_or(0.0)),
                    Status::Cached if *from_remote => "cached (remote)".into(),
                    Status::Cached => "cached".into(),
                    Status::Failed => format!("failed: {why}"),
                    Status::Blocked => format!("blocked: {why}"),
                    Status::Skipped => format!("skipped: {why}"),
                }
            }
            _ => return None,
        })
    }

    /// One JSON object, as `--format json` prints it.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The plain one-line form `ptl run` prints for run events (`None` for the others, which their
    /// command words itself).
    pub fn line(&self) -> Option<String> {
        Some(match self {
            Event::Tracking { to } => format!("tracking {to}"),
            Event::StageStarted { stage } => format!("running  {stage}"),
            Event::StageLog { stage, line } => format!("         {stage}: {line}"),
            Event::StageProgress {
                stage,
                step,
                total,
                note,
            } => {
                let sep = if note.is_empty() { "" } else { " " };
                format!("         {stage}: step {step}/{total}{sep}{note}")
            }
            Event::StageCancelled { stage, forced: false } => format!("cancelled {stage}"),
            Event::StageCancelled { stage, forced: true } => format!(
                "cancelled {stage} (did not stop within the grace period; its result will be discarded)"
            ),
            Event::StageFinished {
                stage,
                status,
                seconds,
                error,
                by_another_run,
                from_remote,
                ..
            } => {
                let why = error.as_deref().unwrap_or_default();
                match status {
                    Status::Cached if *by_another_run => {
                        format!("cached   {stage} (computed by another run)")
                    }
                    Status::Cached if *from_remote => format!(
                        "cached   {stage} (downloaded from the remote store in {:.1} s)",
                        seconds.unwrap_or(0.0)
                    ),
                    Status::Cached => format!("cached   {stage}"),
                    Status::Ran => format!("ran      {stage} in {:.1} s", seconds.unwrap_or(0.0)),
                    Status::Failed => format!("failed   {stage}: {why}"),
                    Status::Blocked => format!("blocked  {stage}: {why}"),
                    Status::Skipped => format!("skipped  {stage}: {why}"),
                }
            }
            Event::Summary {
                cached,
                ran,
                failed,
                blocked,
                cancelled,
                not_selected,
            } => {
                let mut s = format!("{cached} cached, {ran} ran, {failed} failed, {blocked} blocked");
                if *cancelled > 0 {
                    s.push_str(&format!(", {cancelled} cancelled"));
                }
                if *not_selected > 0 {
                    s.push_str(&format!(", {not_selected} not selected"));
                }
                s
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::outcome::Failure;

    /// The JSON watch users read stays as it was for every existing field.
    #[test]
    fn run_events_keep_their_json_shape() {
        let cases = [
            (
                Event::StageStarted { stage: "a".into() },
                r#"{"event":"stage_started","stage":"a"}"#,
            ),
            (
                Event::finished("a", &Outcome::Ran(1.5)),
                r#"{"event":"stage_finished","stage":"a","status":"ran","seconds":1.5}"#,
            ),
            (
                Event::finished("a", &Outcome::Cached),
                r#"{"event":"stage_finished","stage":"a","status":"cached"}"#,
            ),
            (
                Event::finished("a", &Outcome::Blocked("why".into())),
                r#"{"event":"stage_finished","stage":"a","status":"blocked","error":"why"}"#,
            ),
            (
                Event::finished("a", &Outcome::Failed(Failure::plain("boom"))),
                r#"{"event":"stage_finished","stage":"a","status":"failed","error":"boom","code":"ptl::stage_failed"}"#,
            ),
            (
                Event::finished("a", &Outcome::Cancelled),
                r#"{"event":"stage_cancelled","stage":"a","forced":false}"#,
            ),
            (
                Event::StageProgress {
                    stage: "a".into(),
                    step: 1,
                    total: 2,
                    note: "n".into(),
                },
                r#"{"event":"stage_progress","stage":"a","step":1,"total":2,"note":"n"}"#,
            ),
            (Event::Idle, r#"{"event":"idle"}"#),
            (
                Event::Plan {
                    plan: serde_json::json!({"pipeline": "p", "stages": []}),
                },
                r#"{"event":"plan","pipeline":"p","stages":[]}"#,
            ),
        ];
        for (event, json) in cases {
            assert_eq!(event.json(), json);
        }
        assert_eq!(
            Event::finished("a", &Outcome::CachedByOther)
                .line()
                .unwrap(),
            "cached   a (computed by another run)"
        );
    }
}
