//! `ptl serve`: an OpenAI-compatible server (axum on tokio) for models and their LoRA adapters.
//! Each base model is loaded once and owned by a batching thread (`engine`); its adapters are served
//! beside it, chosen per request by `model` (`name`, or `base:name` as Ray Serve spells it).

pub mod api;
pub mod engine;
pub mod routes;
pub mod text;

use crate::data::tokenizer::TextTokenizer;
use axum::routing::{get, post};
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

/// A base model to serve with its adapters, each by name.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub name: String,
    pub dir: PathBuf,
    pub adapters: Vec<(String, PathBuf)>,
}

/// How the server listens and what it allows.
#[derive(Clone, Debug)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Rows decoded together per base model.
    pub max_batch: usize,
    /// Requests waiting for a row, per base model, before 429.
    pub queue: usize,
    /// The largest `max_tokens` (and the default).
    pub max_tokens: usize,
    /// The largest request body, bytes.
    pub max_body: usize,
}

/// A name clients can ask for.
pub struct Served {
    pub id: String,
    pub base: usize,
    pub adapter: Option<usize>,
    /// An adapter's base model.
    pub parent: Option<String>,
}

/// A loaded base model: its engine's queue and what requests are rendered with.
pub struct Base {
    pub jobs: SyncSender<engine::Job>,
    pub tok: TextTokenizer,
    pub stop: Vec<u32>,
    /// Positions the model reads at most (prompt and answer).
    pub max_positions: usize,
}

pub struct State {
    pub models: Vec<Served>,
    pub bases: Vec<Base>,
    pub api_key: Option<String>,
    pub max_tokens: usize,
    pub max_body: usize,
    pub created: u64,
}

impl State {
    /// The served model called `id`: a base, an adapter, or `base:adapter`.
    pub fn find(&self, id: &str) -> Option<&Served> {
        self.models.iter().find(|m| m.id == id).or_else(|| {
            let (base, adapter) = id.split_once(':')?;
            self.models
                .iter()
                .find(|m| m.id == adapter && m.parent.as_deref() == Some(base))
        })
    }
}

/// Loads every model (each base once), starts its batching thread, and returns the shared state.
pub fn load(
    specs: &[ModelSpec],
    settings: &Settings,
    compute: &crate::plan::compute::Compute,
    log: &dyn Fn(&str),
) -> crate::error::Result<State> {
    let mut models = Vec::new();
    let mut bases = Vec::new();
    for spec in specs {
        let mut model = compute.load(&spec.dir)?;
        let tok = TextTokenizer::load(&spec.dir)?;
        let stop = tok.stop_ids(&spec.dir);
        let base = bases.len();
        models.push(Served {
            id: spec.name.clone(),
            base,
            adapter: None,
            parent: None,
        });
        for (name, dir) in &spec.adapters {
            let number = model.add_served_adapter(dir)?;
            models.push(Served {
                id: name.clone(),
                base,
                adapter: Some(number),
                parent: Some(spec.name.clone()),
            });
        }
        log(&format!(
            "{}: {} ({} adapter{})",
            spec.name,
            spec.dir.display(),
            spec.adapters.len(),
            if spec.adapters.len() == 1 { "" } else { "s" }
        ));
        let max_positions = model.cfg.max_position_embeddings;
        let (tx, rx) = std::sync::mpsc::sync_channel(settings.queue.max(1));
        let max_batch = settings.max_batch;
        std::thread::Builder::new()
            .name(format!("ptl-serve-{}", spec.name))
            .spawn(move || crate::plan::compute::on_pool(|| engine::run(model, rx, max_batch)))
            .map_err(|e| format!("cannot start the engine of {}: {e}", spec.name))?;
        bases.push(Base {
            jobs: tx,
            tok,
            stop,
            max_positions,
        });
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = models.iter().find(|m| !seen.insert(m.id.clone())) {
        return Err(format!("two served models are called `{}`", dup.id).into());
    }
    Ok(State {
        models,
        bases,
        api_key: settings.api_key.clone(),
        max_tokens: settings.max_tokens,
        max_body: settings.max_body,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

/// The routes, with request logging.
pub fn router(state: Arc<State>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(routes::health))
        .route("/v1/models", get(routes::models))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

async fn log_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    eprintln!(
        "{method} {path} {} {:.1} ms",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
    response
}

/// Serves until Ctrl-C (then finishes the requests in flight); `ready` is told the bound address.
pub fn serve(
    state: State,
    settings: &Settings,
    ready: &dyn Fn(std::net::SocketAddr),
) -> crate::error::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the server's runtime: {e}"))?;
    runtime.block_on(async {
        let addr = format!("{}:{}", settings.host, settings.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        ready(local);
        axum::serve(listener, router(Arc::new(state)))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| format!("the server stopped: {e}"))?;
        Ok::<(), crate::error::Error>(())
    })
}
