//! An OAuth-protected MCP server on loopback, built on rmcp's Streamable HTTP server, with its own
//! authorization server (protected resource metadata, RFC 8414 metadata, dynamic registration, an
//! authorization endpoint that redirects at once, a token endpoint). Unlike the conformance suite's
//! servers it issues refresh tokens, and its first access token lives one second, so a client
//! that logs in and comes back later must refresh. Its one tool, `token_stats`, says how many
//! tokens were issued and refreshed. Prints `listening on http://127.0.0.1:PORT/mcp`.
#![allow(clippy::unwrap_used)] // a test server: a poisoned lock is a crashed test

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::json;

#[derive(Default)]
struct Tokens {
    /// Access token -> when it expires.
    live: Mutex<HashMap<String, Instant>>,
    issued: AtomicUsize,
    refreshed: AtomicUsize,
}

impl Tokens {
    fn issue(&self, lifetime: Duration) -> serde_json::Value {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("desk-token-{n}");
        self.live
            .lock()
            .unwrap()
            .insert(token.clone(), Instant::now() + lifetime);
        json!({"access_token": token, "token_type": "Bearer",
               "expires_in": lifetime.as_secs(), "refresh_token": format!("desk-refresh-{n}")})
    }

    fn valid(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let live = self.live.lock().unwrap();
        bearer.is_some_and(|t| live.get(t).is_some_and(|until| Instant::now() < *until))
    }
}

#[derive(Clone)]
struct Desk {
    tokens: Arc<Tokens>,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct NoArgs {}

#[tool_router]
impl Desk {
    #[tool(description = "How many access tokens were issued, and how many by refreshing")]
    async fn token_stats(&self, Parameters(_): Parameters<NoArgs>) -> String {
        format!(
            "issued {}, refreshed {}",
            self.tokens.issued.load(Ordering::SeqCst),
            self.tokens.refreshed.load(Ordering::SeqCst)
        )
    }
}

#[tool_handler]
impl ServerHandler for Desk {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("oauth-desk", "1.0.0"))
    }
}

struct App {
    base: String,
    tokens: Arc<Tokens>,
}

#[derive(Deserialize)]
struct Authorize {
    redirect_uri: String,
    state: String,
}

async fn protected_resource(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({"resource": format!("{}/mcp", app.base), "authorization_servers": [app.base]}))
}

async fn authorization_server(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let base = &app.base;
    Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "registration_endpoint": format!("{base}/register"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"]
    }))
}

async fn register() -> (StatusCode, Json<serde_json::Value>) {
    let client = json!({"client_id": "desk-client", "token_endpoint_auth_method": "none",
                        "redirect_uris": [], "grant_types": ["authorization_code", "refresh_token"]});
    (StatusCode::CREATED, Json(client))
}

async fn authorize(Query(request): Query<Authorize>) -> Redirect {
    let back = format!(
        "{}?code=desk-code&state={}",
        request.redirect_uri, request.state
    );
    Redirect::to(&back)
}

async fn token(State(app): State<Arc<App>>, Form(form): Form<HashMap<String, String>>) -> Response {
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") if form.get("code").map(String::as_str) == Some("desk-code") => {
            Json(app.tokens.issue(Duration::from_secs(1))).into_response()
        }
        Some("refresh_token") if form.contains_key("refresh_token") => {
            app.tokens.refreshed.fetch_add(1, Ordering::SeqCst);
            Json(app.tokens.issue(Duration::from_secs(3600))).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
    let tokens = Arc::new(Tokens::default());
    let app = Arc::new(App {
        base: base.clone(),
        tokens: tokens.clone(),
    });
    let desk = Desk { tokens };
    let mcp = StreamableHttpService::new(
        move || Ok(desk.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let challenge =
        format!("Bearer resource_metadata=\"{base}/.well-known/oauth-protected-resource/mcp\"");
    let guard_app = app.clone();
    let guarded = Router::new()
        .nest_service("/mcp", mcp)
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let (app, challenge) = (guard_app.clone(), challenge.clone());
                async move {
                    if app.tokens.valid(request.headers()) {
                        next.run(request).await
                    } else {
                        let refusal = [(header::WWW_AUTHENTICATE, challenge)];
                        (StatusCode::UNAUTHORIZED, refusal).into_response()
                    }
                }
            },
        ));
    let router = Router::new()
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(authorization_server),
        )
        .route("/register", post(register))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .with_state(app)
        .merge(guarded);
    println!("listening on {base}/mcp");
    axum::serve(listener, router).await?;
    Ok(())
}
