//! `fetch`: HTTP GET of allow-listed hosts, returned as text.
//!
//! Every request, and every redirect it follows, must go to a host on the allow-list (`example.com`
//! exactly, `*.example.com` for its subdomains, `*` for any); anything else is refused before a
//! connection is made, so the model cannot reach hosts the user did not name. Bodies are read up to
//! a byte limit and the rest is not downloaded; HTML becomes plain text, other text types pass
//! through, and binary types are refused by name.
//!
//! An allowed name is not enough: loopback, private, link-local and other non-public addresses
//! are refused on the address actually connected to (see [`crate::address`]), on every redirect,
//! and proxy settings in the environment are ignored, unless the options say `allow_private`.

use std::sync::Once;
use std::time::Duration;

use futures::StreamExt;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

use crate::address::{self, PrivateAccess, PublicResolver};

/// Settings, from the `options` of a `{"builtin": "fetch"}` server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchOptions {
    /// Hosts that may be fetched: `example.com`, `*.example.com`, or `*` for any.
    pub allow_hosts: Vec<String>,
    /// Most bytes read from a body (default 1 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Seconds a request may take (default 30).
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Loopback, private, link-local and other non-public addresses fetch may reach anyway:
    /// `true` for all, a list (`["127.0.0.1", "10.0.0.0/8"]`) for those; default none.
    #[serde(default)]
    pub allow_private: PrivateAccess,
}

fn default_max_bytes() -> usize {
    1 << 20
}

fn default_timeout() -> f64 {
    30.0
}

/// A page to fetch.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchArgs {
    /// The http:// or https:// URL.
    pub url: String,
    /// Return the raw body instead of converting HTML to text.
    #[serde(default)]
    pub raw: bool,
}

/// The fetch server.
#[derive(Clone)]
pub struct FetchServer {
    options: FetchOptions,
    client: reqwest::Client,
}

static TLS_PROVIDER: Once = Once::new();

/// Whether `host` matches an allow-list entry.
fn allowed(allow: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allow.iter().any(|rule| {
        let rule = rule.to_ascii_lowercase();
        match rule.strip_prefix("*.") {
            _ if rule == "*" => true,
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == rule,
        }
    })
}

impl FetchServer {
    /// A server with `options`; an empty allow-list or a bad limit is an error.
    pub fn new(options: FetchOptions) -> Result<Self, String> {
        if options.allow_hosts.is_empty() {
            return Err("fetch needs `allow_hosts` (host names, `*.domain`, or `*`)".into());
        }
        if options.max_bytes == 0 {
            return Err("fetch `max_bytes` must be positive".into());
        }
        if !(options.timeout_secs.is_finite() && options.timeout_secs > 0.0) {
            return Err("fetch `timeout_secs` must be a positive number".into());
        }
        TLS_PROVIDER.call_once(|| {
            // Another part of the process may have installed one already; either is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let allow = options.allow_hosts.clone();
        let access = options.allow_private.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            let host = attempt.url().host_str().unwrap_or("").to_string();
            if attempt.previous().len() >= 5 {
                return attempt.error("more than 5 redirects");
            }
            if !allowed(&allow, &host) {
                return attempt.error(format!(
                    "redirected to `{host}`, which is not on the allow-list"
                ));
            }
            match address::check_literal(attempt.url(), &access) {
                Err(e) => attempt.error(format!("redirected: {e}")),
                Ok(()) => attempt.follow(),
            }
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(PublicResolver(options.allow_private.clone()))
            .redirect(redirects)
            .timeout(Duration::from_secs_f64(options.timeout_secs))
            .user_agent(concat!("kestrel-fetch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { options, client })
    }
}

#[tool_router]
impl FetchServer {
    /// Fetch a web page or text file with HTTP GET and return its content as text (HTML is
    /// converted to plain text). Only allow-listed hosts can be fetched.
    #[tool(annotations(read_only_hint = true, open_world_hint = true))]
    async fn fetch(&self, Parameters(args): Parameters<FetchArgs>) -> Result<String, String> {
        let url = reqwest::Url::parse(&args.url)
            .map_err(|e| format!("`{}` is not a URL: {e}", args.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "`{}`: only http and https URLs can be fetched",
                args.url
            ));
        }
        let host = url.host_str().unwrap_or("");
        if !allowed(&self.options.allow_hosts, host) {
            return Err(format!(
                "`{host}` is not on the allow-list ({})",
                self.options.allow_hosts.join(", ")
            ));
        }
        address::check_literal(&url, &self.options.allow_private)?;
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("GET {url} failed: {}", error_chain(&e)))?;
        let status = response.status();
        let kind = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let textual = kind.is_empty()
            || kind.starts_with("text/")
            || kind.contains("json")
            || kind.contains("xml")
            || kind.contains("javascript");
        if !textual {
            return Err(format!("GET {url}: the content is `{kind}`, not text"));
        }
        let limit = self.options.max_bytes;
        let mut body = Vec::new();
        let mut cut = false;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| format!("GET {url}: reading failed: {}", error_chain(&e)))?;
            let room = limit - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                cut = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);
        let mut text = if kind.contains("html") && !args.raw {
            html2text::from_read(text.as_bytes(), 100)
                .map_err(|e| format!("GET {url}: the HTML could not be read: {e}"))?
        } else {
            text.into_owned()
        };
        if cut {
            text.push_str(&format!("\n[cut: only the first {limit} bytes were read]"));
        }
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}\n{text}"));
        }
        Ok(text)
    }
}

/// An error with its causes (reqwest's own message rarely says why).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[tool_handler]
impl ServerHandler for FetchServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "kestrel-fetch",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(format!(
                "Fetches web pages from these hosts only: {}.",
                self.options.allow_hosts.join(", ")
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_is_read_only_and_open_world() {
        let tools = FetchServer::tool_router().list_all();
        let a = tools[0].annotations.clone().unwrap_or_default();
        assert_eq!(
            (a.read_only_hint, a.open_world_hint),
            (Some(true), Some(true))
        );
    }

    #[test]
    fn hosts_match_exactly_or_by_domain() {
        let allow = vec!["example.com".to_string(), "*.docs.rs".to_string()];
        assert!(allowed(&allow, "example.com"));
        assert!(allowed(&allow, "EXAMPLE.com."));
        assert!(!allowed(&allow, "www.example.com"));
        assert!(!allowed(&allow, "example.com.evil.net"));
        assert!(allowed(&allow, "serde.docs.rs"));
        assert!(!allowed(&allow, "docs.rs"));
        assert!(!allowed(&allow, "notdocs.rs"));
        assert!(allowed(&["*".to_string()], "anything.org"));
    }

    /// A loopback HTTP server answering every request with `response`; counts connections.
    async fn server(
        ip: &str,
        response: String,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let address = listener.local_addr().expect("address");
        let connections = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        (format!("http://{address}/"), connections)
    }

    fn fetcher(options: serde_json::Value) -> FetchServer {
        FetchServer::new(serde_json::from_value(options).expect("options")).expect("server")
    }

    async fn get(server: &FetchServer, url: &str) -> Result<String, String> {
        server
            .fetch(Parameters(FetchArgs {
                url: url.into(),
                raw: false,
            }))
            .await
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\
                      connection: close\r\n\r\nhello";

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        use std::sync::atomic::Ordering;
        let (url, connections) = server("127.0.0.1", OK.into()).await;
        let closed = fetcher(serde_json::json!({"allow_hosts": ["*"]}));
        let e = get(&closed, &url).await.expect_err("loopback");
        assert!(e.contains("127.0.0.1 (loopback)"), "{e}");
        assert!(e.contains("allow_private"), "{e}");
        let by_name = url.replace("127.0.0.1", "localhost");
        let e = get(&closed, &by_name).await.expect_err("by name");
        assert!(e.contains("`localhost` leads only to"), "{e}");
        assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing connected");
        let open =
            fetcher(serde_json::json!({"allow_hosts": ["*"], "allow_private": ["127.0.0.1"]}));
        assert_eq!(get(&open, &url).await.as_deref(), Ok("hello"));
        assert_eq!(get(&open, &by_name).await.as_deref(), Ok("hello"));
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_redirect_to_another_local_address_is_refused() {
        use std::sync::atomic::Ordering;
        let (target, reached) = server("127.0.0.2", OK.into()).await;
        let redirect = format!(
            "HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\n\
             connection: close\r\n\r\n"
        );
        let (url, _) = server("127.0.0.1", redirect).await;
        let open =
            fetcher(serde_json::json!({"allow_hosts": ["*"], "allow_private": ["127.0.0.1"]}));
        let e = get(&open, &url).await.expect_err("redirect");
        assert!(e.contains("redirected: `127.0.0.2`"), "{e}");
        assert_eq!(reached.load(Ordering::SeqCst), 0);
        let all = fetcher(serde_json::json!({"allow_hosts": ["*"], "allow_private": true}));
        assert_eq!(get(&all, &url).await.as_deref(), Ok("hello"));
    }

    #[test]
    fn options_are_checked() {
        let options = |v: serde_json::Value| serde_json::from_value::<FetchOptions>(v);
        assert!(options(serde_json::json!({"allow_hosts": ["a"], "nope": 1})).is_err());
        let empty = options(serde_json::json!({"allow_hosts": []})).expect("parses");
        assert!(FetchServer::new(empty).is_err_and(|e| e.contains("allow_hosts")));
        let zero =
            options(serde_json::json!({"allow_hosts": ["a"], "max_bytes": 0})).expect("parses");
        assert!(FetchServer::new(zero).is_err_and(|e| e.contains("max_bytes")));
    }
}
