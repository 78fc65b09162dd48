//! `kestrel serve`: the model over HTTP, in OpenAI's and Anthropic's API shapes, for the clients
//! people already have (the `openai` and `anthropic` SDKs, agent frameworks, coding agents).
//!
//! One engine serves every request: requests decode together in the same forward passes, and a
//! request whose prompt starts like an earlier one (a conversation's history, a shared system
//! prompt) prefills only the rest (`usage.prompt_tokens_details.cached_tokens`). Each request is
//! one [`kestrel::reply::Reply`]; this module only maps HTTP and JSON onto it. A client that goes
//! away cancels its generation: dropping the reply cancels it, and axum drops a handler's future
//! (or the streaming body) when the connection closes.
//!
//! With `--config`, the file's MCP servers start once and requests may run their tools here
//! (`mcp.rs`: the Responses API's `mcp` tools, also read by Chat Completions); the host stops
//! with the server.
//!
//! Every bad request is answered in the API's error shape with a message naming the field; the
//! server never answers 500 for input.

mod answer;
mod anthropic;
mod anthropic_turns;
mod chat;
mod chat_mcp;
mod completions;
mod error;
mod format;
mod input_items;
mod mcp;
mod messages;
mod metrics;
mod request;
mod response_items;
mod responses;
mod responses_input;
mod signature;
mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kestrel::backend::{Backend, Embedded};
use kestrel::mcp::{HostOptions, McpConfig, McpHost};
use kestrel::reply::Replier;
use kestrel_engine::EngineOptions;
use serde_json::json;
use tracing::Instrument;

use crate::args::ServeArgs;
use crate::loading::{connect_engine, load_model_for};
use error::ApiError;

/// Most bytes of a request body.
const MAX_BODY_BYTES: usize = 16 << 20;

/// What the handlers share.
struct Server {
    replier: Replier,
    model: String,
    api_key: Option<String>,
    created: u64,
    metrics: Arc<metrics::Metrics>,
    signer: Arc<signature::Signer>,
    responses: store::ResponseStore,
    /// The MCP servers of `--config`, whose tools requests may run here.
    mcp: Option<Arc<McpHost>>,
}

/// Runs the command until Ctrl-C or SIGTERM.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let parallel = usize::from(args.parallel);
    // A bad file is said before the model loads.
    let config = match &args.config {
        Some(path) => {
            let mut config = McpConfig::load(path)?;
            config.sandbox_servers |= args.sandbox_servers;
            Some(config)
        }
        None => None,
    };
    let backend: Arc<dyn Backend> = match &args.engine.engine {
        Some(url) => connect_engine(&args.model, &args.engine, url)?,
        None => {
            let model = load_model_for(&args.model, parallel)?;
            let options = EngineOptions {
                max_sequences: parallel,
                ..EngineOptions::default()
            };
            Arc::new(Embedded::start(model, options)?)
        }
    };
    let model = backend.model_name().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mcp = match &config {
        Some(config) => {
            let host = runtime.block_on(McpHost::start(config, HostOptions::from_config(config)));
            for status in runtime.block_on(host.status()) {
                match status.error {
                    Some(e) => eprintln!(
                        "warning: MCP server `{}` is not available: {e}",
                        status.name
                    ),
                    None => eprintln!("MCP server `{}`: {} tools", status.name, status.tools.len()),
                }
            }
            Some(Arc::new(host))
        }
        None => None,
    };
    let server = Arc::new(Server {
        replier: Replier::new(backend)?,
        model,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        created: unix_time(),
        metrics: metrics::Metrics::new(parallel + usize::from(args.queue)),
        signer: Arc::new(signature::Signer::load()),
        responses: store::ResponseStore::default(),
        mcp,
    });
    runtime.block_on(async move {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let local = listener.local_addr()?;
        eprintln!("serving {} on http://{local}/v1", server.model);
        axum::serve(listener, router(server.clone()))
            // Ctrl-C or SIGTERM (a service manager's stop): requests in flight finish, then the
            // MCP servers are stopped gracefully.
            .with_graceful_shutdown(async {
                crate::startup::next_signal().await;
            })
            .await
            .context("the server failed")?;
        if let Some(host) = &server.mcp {
            host.shutdown().await;
        }
        Ok(())
    })
}

fn router(server: Arc<Server>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route_layer(axum::middleware::from_fn_with_state(
            server.clone(),
            authorize,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(request_span))
        .with_state(server)
}

/// Longest client-chosen request id kept (a longer or odd one is replaced).
const MAX_REQUEST_ID: usize = 128;

/// Gives every request an id (the client's `x-request-id` when it sends a sane one) and a span
/// that carries it, so that every log line of the request, its generation included, names it;
/// the id comes back in the response's `x-request-id`.
async fn request_span(request: Request, next: Next) -> Response {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let given = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic())
        });
    let id = given.map_or_else(
        || {
            format!(
                "req_{:x}_{}",
                unix_time(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        },
        str::to_string,
    );
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "answered"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Runs a request's streaming half on its own task, still inside the request's span.
fn spawn_in_span<F>(task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(task.in_current_span());
}

/// The header a request id travels in.
const REQUEST_ID: &str = "x-request-id";

/// With `--api-key`, requests must carry it: as a bearer token (OpenAI's clients) or in
/// `x-api-key` (Anthropic's).
async fn authorize(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    let Some(expected) = &server.api_key else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header(AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer "));
    let allowed =
        bearer == Some(expected.as_str()) || header("x-api-key") == Some(expected.as_str());
    let anthropic = request.uri().path().starts_with("/v1/messages");
    if allowed {
        next.run(request).await
    } else if anthropic {
        error::AnthropicError(ApiError::unauthorized()).into_response()
    } else {
        ApiError::unauthorized().into_response()
    }
}

async fn health() -> &'static str {
    "ok"
}

async fn metrics(State(server): State<Arc<Server>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        server.metrics.render(server.replier.backend().stats()),
    )
        .into_response()
}

async fn models(State(server): State<Arc<Server>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": server.model,
            "object": "model",
            "created": server.created,
            "owned_by": "kestrel",
        }],
    }))
    .into_response()
}

async fn not_found(request: Request) -> Response {
    ApiError::not_found(&format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
    .into_response()
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
