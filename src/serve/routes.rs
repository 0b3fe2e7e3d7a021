//! The HTTP endpoints: `/v1/models`, `/v1/chat/completions`, `/v1/completions` (whole answers or
//! server-sent events), `/health`; every error OpenAI-shaped, a 4xx for anything the client sent.

use super::api::{self, ApiError, Prompt, Request};
use super::engine::{Event, Job, TokenLogprob};
use super::text::TextStream;
use super::{Base, State};
use crate::data::encode::{EncodeOptions, Encoder, Skip};
use crate::data::rows::Side;
use crate::model::generation::Sampling;
use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value as Json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

type Shared = AxumState<Arc<State>>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = (status, axum::Json(self.body())).into_response();
        if self.status == 429 {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The bearer token check (when the server has a key).
fn authorize(state: &State, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError {
            status: 401,
            message: "a valid API key is required: `Authorization: Bearer <key>`".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        })
    }
}

/// The body, at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::status(
            413,
            "invalid_request_error",
            format!("the request body is larger than {limit} bytes"),
        )
    })
}

pub async fn health() -> axum::Json<Json> {
    axum::Json(json!({"status": "ok"}))
}

pub async fn models(AxumState(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let data: Vec<Json> = state
        .models
        .iter()
        .map(|m| {
            let mut o =
                json!({"id": m.id, "object": "model", "created": state.created, "owned_by": "ptl"});
            if let Some(p) = &m.parent {
                o["parent"] = json!(p);
            }
            o
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::status(
        405,
        "invalid_request_error",
        "this endpoint does not take that method",
    )
}

pub async fn not_found() -> ApiError {
    ApiError::status(404, "invalid_request_error", "no such endpoint")
}

pub async fn chat(state: Shared, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    endpoint(state, headers, body, api::chat, true).await
}

pub async fn completions(
    state: Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    endpoint(state, headers, body, api::completion, false).await
}

/// A generating endpoint: the key checked, the body read within its limit and parsed by `parse`.
async fn endpoint(
    AxumState(state): Shared,
    headers: HeaderMap,
    body: Body,
    parse: fn(&serde_json::Map<String, Json>, usize) -> Result<Request, ApiError>,
    chat: bool,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = api::object(&read_body(body, state.max_body).await?)?;
    let request = parse(&body, state.max_tokens)?;
    answer(state, request, chat).await
}

/// One choice being generated.
struct Choice {
    index: usize,
    /// Which prompt it answers.
    prompt: usize,
    prompt_tokens: usize,
    echo: String,
}

/// Prompts as token ids, with their text (for `echo`).
fn prompts(base: &Base, prompt: &Prompt) -> Result<Vec<(String, Vec<u32>)>, ApiError> {
    let opts = EncodeOptions {
        max_len: usize::MAX,
        ..EncodeOptions::default()
    };
    let enc = Encoder::new(&base.tok, None, opts)
        .map_err(|e| ApiError::status(400, "invalid_request_error", e))?;
    let sides: Vec<(Side, &str)> = match prompt {
        Prompt::Chat(m) => vec![(Side::Messages(m.clone()), "messages")],
        Prompt::Texts(t) => t
            .iter()
            .map(|t| (Side::Text(t.clone()), "prompt"))
            .collect(),
    };
    sides
        .into_iter()
        .map(|(side, param)| {
            enc.prompt(&side).map_err(|e| {
                let (Skip::Dropped(why) | Skip::Bad(why)) = e;
                ApiError::invalid(param, format!("cannot render the prompt: {why}"))
            })
        })
        .collect()
}

async fn answer(state: Arc<State>, request: Request, chat: bool) -> Result<Response, ApiError> {
    let common = &request.common;
    let served = state.find(&common.model).ok_or_else(|| ApiError {
        status: 404,
        message: format!("the model `{}` does not exist", common.model),
        kind: "invalid_request_error",
        param: Some("model".into()),
        code: Some("model_not_found"),
    })?;
    let base = &state.bases[served.base];
    let prompts = prompts(base, &request.prompt)?;
    let sampling = if common.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Sample {
            temperature: common.temperature,
            top_k: 0,
            top_p: common.top_p,
        }
    };
    let (tx, rx) = unbounded_channel();
    let mut choices = Vec::new();
    // Every row of the request stops generating once the answer is complete (a stop string met
    // in every choice) or abandoned (the handler returned).
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let seed = common
        .seed
        .unwrap_or_else(|| NEXT_ID.fetch_add(1, Ordering::Relaxed));
    for (p, (text, ids)) in prompts.iter().enumerate() {
        let room = base.max_positions.saturating_sub(ids.len());
        if room == 0 || ids.is_empty() {
            return Err(ApiError::invalid(
                if chat { "messages" } else { "prompt" },
                format!(
                    "the prompt has {} tokens; the model reads at most {}",
                    ids.len(),
                    base.max_positions
                ),
            ));
        }
        let max_new = common.max_tokens.unwrap_or(state.max_tokens).min(room);
        for j in 0..common.n {
            let index = p * common.n + j;
            let job = Job {
                prompt: ids.clone(),
                adapter: served.adapter,
                max_new,
                sampling,
                seed: seed.wrapping_add(index as u64),
                stop: base.stop.clone(),
                top_logprobs: request.logprobs,
                events: tx.clone(),
                tag: index,
                cancel: cancel.clone(),
            };
            base.jobs.try_send(job).map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => ApiError::status(
                    429,
                    "rate_limit_error",
                    "the server's queue is full: retry shortly",
                ),
                std::sync::mpsc::TrySendError::Disconnected(_) => {
                    ApiError::status(503, "server_error", "the model's engine stopped")
                }
            })?;
            choices.push(Choice {
                index,
                prompt: p,
                prompt_tokens: ids.len(),
                echo: if request.echo {
                    text.clone()
                } else {
                    String::new()
                },
            });
        }
    }
    drop(tx);
    let meta = Meta {
        id: format!(
            "{}-{}",
            if chat { "chatcmpl" } else { "cmpl" },
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ),
        model: common.model.clone(),
        created: now(),
        chat,
        include_usage: common.include_usage,
        logprobs: request.logprobs.is_some(),
    };
    if common.stream {
        let (out, stream) = tokio::sync::mpsc::channel::<Result<Sse, std::convert::Infallible>>(64);
        let stops = common.stop.clone();
        let base_index = served.base;
        tokio::spawn(async move {
            let _cancel_on_drop = _cancel_on_drop;
            stream_answer(&state, base_index, meta, choices, rx, &stops, out).await;
        });
        let body = axum::response::Sse::new(tokio_stream::wrappers::ReceiverStream::new(stream))
            .keep_alive(KeepAlive::default());
        return Ok(body.into_response());
    }
    let done = collect(&state, served.base, &choices, rx, &common.stop).await?;
    Ok(axum::Json(whole_answer(base, &meta, &choices, done)).into_response())
}

/// Sets the flag when dropped: a request's rows stop when its handler is gone.
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What a response names and how it is shaped.
struct Meta {
    id: String,
    model: String,
    created: u64,
    chat: bool,
    include_usage: bool,
    logprobs: bool,
}

/// A finished choice: its text, why it ended, how many tokens, its log-probs.
struct Finished {
    text: String,
    reason: &'static str,
    tokens: usize,
    logprobs: Vec<(u32, TokenLogprob)>,
}

/// Waits for every choice to finish.
async fn collect(
    state: &State,
    base: usize,
    choices: &[Choice],
    mut rx: UnboundedReceiver<(usize, Event)>,
    stops: &[String],
) -> Result<Vec<Finished>, ApiError> {
    let b = &state.bases[base];
    let mut streams: Vec<TextStream> = choices
        .iter()
        .map(|_| TextStream::new(&b.tok, &b.stop, stops))
        .collect();
    let mut done: Vec<Option<Finished>> = choices.iter().map(|_| None).collect();
    let mut partial: Vec<(usize, Vec<(u32, TokenLogprob)>)> =
        choices.iter().map(|_| (0, Vec::new())).collect();
    let slot = |tag: usize| choices.iter().position(|c| c.index == tag);
    while done.iter().any(Option::is_none) {
        let Some((tag, event)) = rx.recv().await else {
            return Err(ApiError::status(
                500,
                "server_error",
                "the model's engine stopped",
            ));
        };
        let Some(i) = slot(tag) else { continue };
        if done[i].is_some() {
            continue;
        }
        match event {
            Event::Token { id, logprob } => {
                streams[i].push(id);
                partial[i].0 += 1;
                if let Some(lp) = logprob {
                    if !b.stop.contains(&id) {
                        partial[i].1.push((id, lp));
                    }
                }
                if streams[i].stopped {
                    done[i] = Some(finish(&mut streams[i], &mut partial[i], "stop"));
                }
            }
            Event::Done { stopped } => {
                let reason = if stopped { "stop" } else { "length" };
                done[i] = Some(finish(&mut streams[i], &mut partial[i], reason));
            }
            Event::Failed(e) => return Err(ApiError::status(500, "server_error", e)),
        }
    }
    Ok(done.into_iter().flatten().collect())
}

fn finish(
    stream: &mut TextStream,
    partial: &mut (usize, Vec<(u32, TokenLogprob)>),
    reason: &'static str,
) -> Finished {
    stream.finish();
    Finished {
        text: stream.text().to_string(),
        reason,
        tokens: partial.0,
        logprobs: std::mem::take(&mut partial.1),
    }
}

fn usage(prompt: usize, completion: usize) -> Json {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A token as text, for log-probs.
fn token_text(b: &Base, id: u32) -> String {
    b.tok.inner.decode(&[id], false).unwrap_or_default()
}

fn chat_logprobs(b: &Base, lps: &[(u32, TokenLogprob)]) -> Json {
    let entry = |id: u32, lp: f32| {
        let t = token_text(b, id);
        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
    };
    let content: Vec<Json> = lps
        .iter()
        .map(|(id, lp)| {
            let mut e = entry(*id, lp.logprob);
            e["top_logprobs"] = Json::Array(lp.top.iter().map(|(t, l)| entry(*t, *l)).collect());
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

fn completion_logprobs(b: &Base, lps: &[(u32, TokenLogprob)], offset: usize) -> Json {
    let mut at = offset;
    let (mut tokens, mut values, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for (id, lp) in lps {
        let t = token_text(b, *id);
        offsets.push(at);
        at += t.len();
        tokens.push(json!(t));
        values.push(json!(lp.logprob));
        let top: serde_json::Map<String, Json> = lp
            .top
            .iter()
            .map(|(t, l)| (token_text(b, *t), json!(l)))
            .collect();
        tops.push(Json::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets})
}

/// Prompt tokens counted once per prompt (not per choice), as OpenAI counts them with `n`.
fn prompt_usage(choices: &[Choice]) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    choices
        .iter()
        .filter(|c| seen.insert(c.prompt))
        .map(|c| c.prompt_tokens)
        .sum()
}

fn whole_answer(b: &Base, meta: &Meta, choices: &[Choice], done: Vec<Finished>) -> Json {
    let completion_total: usize = done.iter().map(|d| d.tokens).sum();
    let items: Vec<Json> = choices
        .iter()
        .zip(&done)
        .map(|(c, d)| {
            if meta.chat {
                json!({
                    "index": c.index,
                    "message": {"role": "assistant", "content": d.text, "refusal": null},
                    "logprobs": if meta.logprobs { chat_logprobs(b, &d.logprobs) } else { Json::Null },
                    "finish_reason": d.reason,
                })
            } else {
                json!({
                    "index": c.index,
                    "text": format!("{}{}", c.echo, d.text),
                    "logprobs": if meta.logprobs { completion_logprobs(b, &d.logprobs, c.echo.len()) } else { Json::Null },
                    "finish_reason": d.reason,
                })
            }
        })
        .collect();
    json!({
        "id": meta.id,
        "object": if meta.chat { "chat.completion" } else { "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": items,
        "usage": usage(prompt_usage(choices), completion_total),
        "system_fingerprint": null,
    })
}

/// One server-sent event of a streamed answer.
fn chunk(meta: &Meta, choices: Vec<Json>, usage: Option<Json>) -> Sse {
    let mut o = json!({
        "id": meta.id,
        "object": if meta.chat { "chat.completion.chunk" } else { "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "system_fingerprint": null,
    });
    if meta.include_usage {
        o["usage"] = usage.unwrap_or(Json::Null);
    }
    Sse::default().data(o.to_string())
}

/// A streamed choice's delta: its text (and log-probs), and why it ended when it did.
fn delta(
    b: &Base,
    meta: &Meta,
    index: usize,
    text: &str,
    lps: &[(u32, TokenLogprob)],
    reason: Option<&str>,
) -> Json {
    let logprobs = if meta.logprobs && !lps.is_empty() {
        if meta.chat {
            chat_logprobs(b, lps)
        } else {
            completion_logprobs(b, lps, 0)
        }
    } else {
        Json::Null
    };
    if meta.chat {
        let content = if reason.is_some() && text.is_empty() {
            json!({})
        } else {
            json!({"content": text})
        };
        json!({"index": index, "delta": content, "logprobs": logprobs, "finish_reason": reason})
    } else {
        json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason})
    }
}

/// Streams the choices as server-sent events until each is done; stops early (freeing the rows)
/// when the client goes away.
async fn stream_answer(
    state: &State,
    base: usize,
    meta: Meta,
    choices: Vec<Choice>,
    mut rx: UnboundedReceiver<(usize, Event)>,
    stops: &[String],
    out: tokio::sync::mpsc::Sender<Result<Sse, std::convert::Infallible>>,
) {
    let b = &state.bases[base];
    let send = |e: Sse| out.send(Ok(e));
    if meta.chat {
        let first: Vec<Json> = choices
            .iter()
            .map(|c| json!({"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
            .collect();
        if send(chunk(&meta, first, None)).await.is_err() {
            return;
        }
    } else {
        for c in choices.iter().filter(|c| !c.echo.is_empty()) {
            let d = delta(b, &meta, c.index, &c.echo, &[], None);
            if send(chunk(&meta, vec![d], None)).await.is_err() {
                return;
            }
        }
    }
    let mut streams: Vec<TextStream> = choices
        .iter()
        .map(|_| TextStream::new(&b.tok, &b.stop, stops))
        .collect();
    let mut ended = vec![false; choices.len()];
    let mut tokens = vec![0usize; choices.len()];
    while ended.iter().any(|e| !e) {
        let Some((tag, event)) = rx.recv().await else {
            break;
        };
        let Some(i) = choices.iter().position(|c| c.index == tag) else {
            continue;
        };
        if ended[i] {
            continue;
        }
        let d = match event {
            Event::Token { id, logprob } => {
                tokens[i] += 1;
                let text = streams[i].push(id);
                let lps: Vec<(u32, TokenLogprob)> = match logprob {
                    Some(lp) if !b.stop.contains(&id) => vec![(id, lp)],
                    _ => vec![],
                };
                if streams[i].stopped {
                    ended[i] = true;
                    delta(b, &meta, tag, &text, &lps, Some("stop"))
                } else if text.is_empty() && lps.is_empty() {
                    continue;
                } else {
                    delta(b, &meta, tag, &text, &lps, None)
                }
            }
            Event::Done { stopped } => {
                ended[i] = true;
                let rest = streams[i].finish();
                delta(
                    b,
                    &meta,
                    tag,
                    &rest,
                    &[],
                    Some(if stopped { "stop" } else { "length" }),
                )
            }
            Event::Failed(e) => {
                let error = ApiError::status(500, "server_error", e).body();
                let _ = send(Sse::default().data(error.to_string())).await;
                return;
            }
        };
        if send(chunk(&meta, vec![d], None)).await.is_err() {
            return;
        }
    }
    if meta.include_usage {
        let u = usage(prompt_usage(&choices), tokens.iter().sum());
        if send(chunk(&meta, vec![], Some(u))).await.is_err() {
            return;
        }
    }
    let _ = send(Sse::default().data("[DONE]")).await;
}
