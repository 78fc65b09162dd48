//! `kestrel mcp login SERVER` and `kestrel mcp logout SERVER`: the browser step of an OAuth
//! server, done once, and forgetting it.
//!
//! The login listens on a loopback port (the server's `oauth.redirectPort`, else any free one)
//! for the browser's redirect, and prints the page to open. On a machine without a browser the
//! page can be opened elsewhere and the address the browser ends on pasted here instead: the
//! first of the two to arrive completes the login. Tokens go to the server's file in
//! ~/.config/kestrel/oauth/ (mode 0600) and are never printed.

use std::io::BufRead;

use anyhow::{Context, bail};
use futures::future::BoxFuture;
use kestrel::mcp::oauth::{self, Authorizer, Grant, StoreChoice, TokenStore};
use kestrel::mcp::{ServerConfig, Transport, default_oauth_dir};
use tokio::net::TcpListener;

use crate::args::McpLoginArgs;
use crate::options::config;

/// The configured HTTP server named `name`: its config, URL and OAuth settings.
fn http_server(
    args: &McpLoginArgs,
) -> anyhow::Result<(ServerConfig, String, oauth::OAuthSettings)> {
    let config = config(args.config.as_ref())?;
    let Some(server) = config.servers.iter().find(|s| s.name == args.server) else {
        let names: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "no server named `{}` in the configuration (servers: {})",
            args.server,
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
    };
    let Transport::Http { url, oauth, .. } = &server.transport else {
        bail!(
            "`{}` is not an HTTP server: OAuth applies to servers with a `url`",
            server.name
        );
    };
    Ok((
        server.clone(),
        url.clone(),
        oauth.clone().unwrap_or_default(),
    ))
}

/// Logs in and keeps the tokens.
pub fn login(args: &McpLoginArgs) -> anyhow::Result<()> {
    let (server, url, settings) = http_server(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        if settings.grant == Grant::ClientCredentials {
            oauth::client_credentials(&url, &settings)
                .await
                .with_context(|| format!("the client credentials for `{}` were refused", server.name))?;
            eprintln!(
                "`{}` uses the client credentials grant: no login is needed, its token is obtained at each connection",
                server.name
            );
            return Ok(());
        }
        let port = settings.redirect_port.unwrap_or(0);
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("cannot listen on 127.0.0.1:{port} for the browser's redirect"))?;
        let port = listener.local_addr()?.port();
        let browser = LoopbackOrPaste {
            listener: std::sync::Mutex::new(Some(listener)),
            redirect: format!("http://127.0.0.1:{port}/callback"),
        };
        let store = TokenStore::new(&default_oauth_dir(), &server.name, &url);
        oauth::log_in(&server.name, &url, &settings, None, StoreChoice::File(store.clone()), &browser)
            .await
            .with_context(|| format!("login to `{}` ({url}) failed", server.name))?;
        eprintln!("logged in to `{}`; tokens kept in {}", server.name, store.path().display());
        anyhow::Ok(())
    })
}

/// Removes the tokens.
pub fn logout(args: &McpLoginArgs) -> anyhow::Result<()> {
    let (server, url, _) = http_server(args)?;
    let store = TokenStore::new(&default_oauth_dir(), &server.name, &url);
    let removed = store
        .remove()
        .with_context(|| format!("cannot remove {}", store.path().display()))?;
    if removed {
        eprintln!(
            "logged out of `{}` (removed {})",
            server.name,
            store.path().display()
        );
    } else {
        eprintln!("no tokens were kept for `{}`", server.name);
    }
    Ok(())
}

/// How long a login waits for the browser.
const LOGIN_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// The browser comes back to a loopback port, or the person pastes where it ended.
struct LoopbackOrPaste {
    /// Taken by the one login that waits on it.
    listener: std::sync::Mutex<Option<TcpListener>>,
    redirect: String,
}

impl Authorizer for LoopbackOrPaste {
    fn redirect_uri(&self) -> String {
        self.redirect.clone()
    }

    fn authorize(&self, server: &str, page: &str) -> BoxFuture<'_, Result<String, String>> {
        eprintln!(
            "To authorize Kestrel for `{server}`, open this page:\n\n  {page}\n\n\
             Waiting for the browser to come back to {} (or paste the address it ends on):",
            self.redirect
        );
        Box::pin(async move {
            // A pasted address, or nothing at the end of input (then only the browser can
            // finish the login).
            let pasted = async {
                let line = tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line).ok()?;
                    Some(line.trim().to_string()).filter(|l| !l.is_empty())
                });
                match line.await {
                    Ok(Some(line)) => line,
                    _ => std::future::pending().await,
                }
            };
            let listener = self.listener.lock().ok().and_then(|mut l| l.take());
            let Some(listener) = listener else {
                return Err("the redirect port was already used by a login".into());
            };
            tokio::select! {
                back = redirected(listener) => back,
                line = pasted => Ok(line),
                () = tokio::time::sleep(LOGIN_WAIT) => Err(format!(
                    "nothing came back within {} minutes", LOGIN_WAIT.as_secs() / 60
                )),
            }
        })
    }
}

/// Waits for the browser's `GET /callback?...`, answers it, and returns the full address.
async fn redirected(listener: TcpListener) -> Result<String, String> {
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let (came_back, mut arrival) = tokio::sync::mpsc::channel::<String>(1);
    // Other paths (a browser also asks for /favicon.ico) get the router's 404.
    let router = axum::Router::new().route(
        "/callback",
        axum::routing::get(move |uri: axum::http::Uri| async move {
            let _ = came_back
                .send(format!("http://127.0.0.1:{port}{uri}"))
                .await;
            "Kestrel is authorized. You can close this page."
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Stopped gracefully, so the browser still gets its page.
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let back = arrival.recv().await;
    let _ = stop.send(());
    let _ = server.await;
    back.ok_or_else(|| "the redirect listener stopped".to_string())
}
