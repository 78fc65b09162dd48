//! A serving engine over HTTP as a [`Backend`]: llama.cpp's `llama-server` in token mode.
//!
//! Kestrel keeps everything that makes its prompts exact: it renders and tokenizes the prompt
//! itself and sends the **ids**, decodes the returned ids with its own tokenizer, and drives its
//! own parser. What the embedded engine does token by token with hooks is done here per request:
//! the thinking budget by generating in segments that end where the budget must be checked (the
//! early-stop text is then appended as forced ids and generation continues; the engine's prompt
//! cache makes a continuation cost only its new tokens), the tool-call constraint by the engine's
//! own lazy grammar (GBNF built from the tools' schemas, triggered by `<tool_call>`).
//!
//! At connection the server is probed once: its kind and context size (`/props`), and whether it
//! tokenizes as Kestrel's tokenizer does (`/tokenize` on a probe with every special token the
//! protocol uses); a mismatch is refused, naming both. Failures before a segment's first token
//! (refused connections, 429 and 5xx answers) are retried with backoff; a stream that breaks
//! after some tokens continues from them in a new segment, so no generated token is lost; an
//! engine that sends nothing for the idle timeout is an error naming it.

mod chat;
mod chat_stream;
mod chat_wire;
mod drive;
mod llama_server;
mod vllm;

use std::sync::Arc;
use std::time::Duration;

use kestrel_engine::Tokenizer;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{Backend, BackendError, Submission, TokenStream};
pub use chat::ChatEngine;
use llama_server::Props;

/// Where the engine is and how to talk to it.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Its OpenAI-compatible base URL (`http://host:port/v1`; a URL without `/v1` is taken as
    /// the server's root).
    pub url: String,
    /// Bearer token.
    pub api_key: Option<String>,
    /// The model name to ask for, when the server serves several.
    pub model: Option<String>,
    /// Most seconds without a byte from the engine during a request before it is an error.
    pub idle_timeout: Duration,
    /// Attempts per segment for failures that are worth retrying (refused connections, 429,
    /// 5xx), the first included.
    pub attempts: u32,
    /// Wait before the first retry; it doubles each time (a `Retry-After` answer is honoured,
    /// up to a minute).
    pub backoff: Duration,
}

impl RemoteOptions {
    /// Defaults for `url`: 10 minutes idle, 5 attempts from half a second.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            api_key: None,
            model: None,
            idle_timeout: Duration::from_secs(600),
            attempts: 5,
            backoff: Duration::from_millis(500),
        }
    }
}

/// Why a remote engine could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The URL is not one.
    #[error("--engine {url:?}: {reason}")]
    BadUrl {
        /// As given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The engine did not answer as expected.
    #[error("engine {url}: {message}")]
    Engine {
        /// The request's URL.
        url: String,
        /// What happened (status and the engine's message, or the transport error).
        message: String,
        /// The HTTP status, when the engine answered.
        status: Option<u16>,
    },
    /// The server is not one Kestrel can drive in token mode.
    #[error(
        "engine {url} is not llama.cpp's llama-server or vLLM ({found}); token mode needs llama-server's /completion or vLLM's /v1/completions with token ids"
    )]
    Unsupported {
        /// Its root URL.
        url: String,
        /// What it looks like instead.
        found: String,
    },
    /// The engine tokenizes differently from Kestrel's tokenizer.
    #[error(
        "engine {url} ({model}) tokenizes differently from the tokenizer of {ours}: {detail}; give --model the same model the engine serves"
    )]
    TokenizerMismatch {
        /// Its root URL.
        url: String,
        /// The model it serves.
        model: String,
        /// Where Kestrel's tokenizer came from.
        ours: String,
        /// The first difference.
        detail: String,
    },
    /// The client or its runtime could not start.
    #[error("cannot start the engine client: {0}")]
    Start(String),
}

/// A serving engine reached over HTTP; clones share the connection pool.
#[derive(Clone)]
pub struct Remote {
    inner: Arc<Inner>,
}

/// Which token API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenDialect {
    /// llama-server's `/completion`.
    LlamaServer,
    /// vLLM's `/v1/completions` with `return_token_ids`.
    Vllm,
}

struct Inner {
    root: String,
    options: RemoteOptions,
    dialect: TokenDialect,
    tokenizer: Arc<Tokenizer>,
    props: Props,
    vocab: usize,
    /// The server applies Kestrel's grammars (lazy triggers, token references); without them,
    /// output is unconstrained and calls are only validated after the fact.
    grammars: bool,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    /// Dropped with the last handle: the runtime's thread then ends.
    _stop: oneshot::Sender<()>,
}

/// What the connection found, for the log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineInfo {
    /// Its root URL.
    pub url: String,
    /// What kind of server it is.
    pub kind: &'static str,
    /// How Kestrel drives it: `token` (prompt ids) or `chat` (messages).
    pub mode: &'static str,
    /// The model file or name it serves.
    pub model: String,
    /// Positions per sequence.
    pub context: usize,
    /// Sequences it decodes at once.
    pub slots: usize,
    /// Its build, when it says.
    pub build: Option<String>,
    /// How the thinking budget is enforced.
    pub thinking_budget: &'static str,
    /// How tool calls are constrained.
    pub tool_calls: &'static str,
}

/// Text with every special token the protocol relies on, to compare tokenizations.
pub(super) const PROBE: &str = "<|im_start|>system\nKestrel probe: héllo 世界 😀 \t 12345\n<|im_end|>\n<|im_start|>assistant\n<think>\nok\n</think>\n\n<tool_call>\n{\"name\": \"x\", \"arguments\": {}}\n</tool_call><|im_end|><|endoftext|>";

impl Remote {
    /// Connects to the engine at `options.url`, checks it and its tokenizer against
    /// `tokenizer`, and returns a backend over it.
    pub fn connect(tokenizer: Tokenizer, options: RemoteOptions) -> Result<Self, RemoteError> {
        let root = root_url(&options.url)?;
        let client = client(&options)?;
        let (runtime, stop) = spawn_runtime()?;
        let (props, vocab, dialect) =
            runtime.block_on(probe(&client, &root, &tokenizer, &options))?;
        let grammars = runtime.block_on(probe_generation(
            &client,
            &root,
            &tokenizer,
            dialect,
            &props.model,
        ))?;
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                options,
                dialect,
                tokenizer: Arc::new(tokenizer),
                props,
                vocab,
                grammars,
                client,
                runtime,
                _stop: stop,
            }),
        })
    }

    /// What the connection found.
    pub fn info(&self) -> EngineInfo {
        let p = &self.inner.props;
        let vllm = self.inner.dialect == TokenDialect::Vllm;
        EngineInfo {
            url: self.inner.root.clone(),
            kind: if vllm { "vLLM" } else { "llama-server" },
            mode: "token",
            model: p.model.clone(),
            context: p.n_ctx,
            slots: p.slots,
            build: p.build.clone(),
            thinking_budget: "segments: n_predict up to the budget, then Qwen's early-stop ids appended",
            tool_calls: if vllm && self.inner.grammars {
                "a structural tag from the tools' schemas (structured outputs), triggered by <tool_call>; answer formats are not constrained; arguments validated again after"
            } else if self.inner.grammars {
                "lazy GBNF grammar from the tools' schemas, triggered by <tool_call>; arguments validated again after"
            } else {
                "NOT constrained (this server's grammars lack lazy triggers or token references); arguments validated after the fact"
            },
        }
    }
}

impl Backend for Remote {
    fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    fn model_name(&self) -> &str {
        self.inner
            .options
            .model
            .as_deref()
            .unwrap_or_else(|| file_stem(&self.inner.props.model))
    }

    fn context_len(&self) -> usize {
        self.inner.props.n_ctx
    }

    fn vocab_size(&self) -> usize {
        self.inner.vocab
    }

    fn submit(&self, submission: Submission) -> Result<TokenStream, BackendError> {
        if !submission.hooks.is_empty() {
            return Err(BackendError::Unsupported(
                "a remote engine runs the thinking budget, the tool-call constraint and the answer's format, and this generation needs another per-token hook, which only the embedded engine runs".into(),
            ));
        }
        let (sender, stream) = TokenStream::channel();
        let driver = drive::Driver::new(self.inner.clone(), submission, sender)?;
        self.inner.runtime.spawn(driver.run());
        Ok(stream)
    }
}

/// The server's root: the URL without a trailing `/` or `/v1`.
fn root_url(url: &str) -> Result<String, RemoteError> {
    let bad = |reason: &str| RemoteError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("expected an http:// or https:// URL"));
    }
    let trimmed = url.trim_end_matches('/');
    Ok(trimmed.strip_suffix("/v1").unwrap_or(trimmed).to_string())
}

fn client(options: &RemoteOptions) -> Result<reqwest::Client, RemoteError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &options.api_key {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| RemoteError::Start("the engine key is not a valid header value".into()))?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(10))
        // llama-server closes idle connections after 5 s; reusing one it is closing costs a
        // retry.
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| RemoteError::Start(e.to_string()))
}

/// A runtime on its own thread, which ends when the returned sender is dropped (so that a
/// backend dropped inside another runtime does not drop a runtime there).
fn spawn_runtime() -> Result<(tokio::runtime::Handle, oneshot::Sender<()>), RemoteError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kestrel-engine-http")
        .enable_all()
        .build()
        .map_err(|e| RemoteError::Start(e.to_string()))?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("kestrel-engine-http".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .map_err(|e| RemoteError::Start(e.to_string()))?;
    Ok((handle, stop))
}

/// Asks the server what it is and checks its tokenizer; returns its props, vocabulary size and
/// token API.
async fn probe(
    client: &reqwest::Client,
    root: &str,
    tokenizer: &Tokenizer,
    options: &RemoteOptions,
) -> Result<(Props, usize, TokenDialect), RemoteError> {
    let props_url = format!("{root}/props");
    let props = first_contact(client, &props_url, options).await;
    let props = match props.as_ref().ok().and_then(Props::parse) {
        Some(p) => p,
        None => {
            let models = get_json(client, &format!("{root}/v1/models")).await;
            if let Ok(models) = &models
                && let Some(entry) = vllm::served_model(models, options.model.as_deref())
            {
                return vllm::probe(client, root, tokenizer, entry).await;
            }
            // Say what it is instead, when it says.
            let found = match models {
                Ok(models) => models["data"][0]["owned_by"]
                    .as_str()
                    .map(|o| format!("its /v1/models is owned by `{o}`"))
                    .unwrap_or_else(|| "it has /v1/models but no llama-server /props".into()),
                Err(e) => match props {
                    Err(p) => format!("{p}; {e}"),
                    Ok(_) => e.to_string(),
                },
            };
            return Err(RemoteError::Unsupported {
                url: root.to_string(),
                found,
            });
        }
    };
    let url = format!("{root}/tokenize");
    let answer = post_json(
        client,
        &url,
        &json!({"content": PROBE, "add_special": false, "parse_special": true}),
    )
    .await?;
    check_tokens(root, &props, tokenizer, &answer)?;
    let vocab = match get_json(client, &format!("{root}/v1/models")).await {
        Ok(models) => models["data"][0]["meta"]["n_vocab"]
            .as_u64()
            .map(|n| n as usize),
        Err(_) => None,
    }
    .unwrap_or_else(|| tokenizer.inner().get_vocab_size(true));
    Ok((props, vocab, TokenDialect::LlamaServer))
}

/// Compares the engine's tokenization of [`PROBE`] (`answer["tokens"]`) with Kestrel's.
pub(super) fn check_tokens(
    root: &str,
    props: &Props,
    tokenizer: &Tokenizer,
    answer: &Value,
) -> Result<(), RemoteError> {
    let ours = tokenizer
        .encode_raw(PROBE)
        .map_err(|e| RemoteError::Start(e.to_string()))?;
    let theirs: Vec<u32> = answer["tokens"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|v| v.as_u64().map(|n| n as u32))
                .collect()
        })
        .unwrap_or_default();
    if theirs != ours {
        let at = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
        let show = |ids: &[u32]| format!("{:?}", &ids[at..ids.len().min(at + 4)]);
        return Err(RemoteError::TokenizerMismatch {
            url: root.to_string(),
            model: props.model.clone(),
            ours: tokenizer.source().display().to_string(),
            detail: format!(
                "a probe text tokenizes to {} ids there and {} here, first differing at id {at}: {} there, {} here",
                theirs.len(),
                ours.len(),
                show(&theirs),
                show(&ours)
            ),
        });
    }
    Ok(())
}

/// How long a probe request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks that the server's `/completion` returns token ids (without them Kestrel cannot
/// drive it), and whether it applies grammars the way Kestrel builds them: lazily triggered by a
/// token and by a pattern, with token references.
async fn probe_generation(
    client: &reqwest::Client,
    root: &str,
    tokenizer: &Tokenizer,
    dialect: TokenDialect,
    model: &str,
) -> Result<bool, RemoteError> {
    let prompt = tokenizer
        .encode_raw("<|im_start|>assistant\n")
        .map_err(|e| RemoteError::Start(e.to_string()))?;
    if dialect == TokenDialect::Vllm {
        return vllm::probe_generation(client, root, &prompt, model).await;
    }
    let url = format!("{root}/completion");
    let plain = post_json(
        client,
        &url,
        &json!({"prompt": prompt, "n_predict": 1, "return_tokens": true, "temperature": 0}),
    )
    .await?;
    if plain["tokens"].as_array().is_none_or(|t| t.is_empty()) {
        return Err(RemoteError::Unsupported {
            url: root.to_string(),
            found: "its /completion does not return token ids (`return_tokens`); a newer llama-server is needed".into(),
        });
    }
    let mut lazy = json!({"prompt": prompt, "n_predict": 1, "temperature": 0});
    let map = lazy.as_object_mut().expect("an object");
    map.insert(
        "grammar".into(),
        json!("root ::= <tool_call> \"\\n\" | \"{\\\"name\\\": \\\"\" [a-z]\n"),
    );
    map.insert("grammar_lazy".into(), json!(true));
    map.insert(
        "grammar_triggers".into(),
        json!([{"type": 1, "value": "<tool_call>"},
               {"type": 3, "value": kestrel_prompts::gbnf::UNTAGGED_TRIGGER}]),
    );
    map.insert("preserved_tokens".into(), json!(["<tool_call>"]));
    match post_json(client, &url, &lazy).await {
        Ok(_) => Ok(true),
        Err(e) => {
            tracing::warn!(
                "engine {root} does not take Kestrel's grammars ({e}): tool calls and answer formats go unconstrained, validated after the fact"
            );
            Ok(false)
        }
    }
}

/// The first request to the engine, retried while it is starting or busy: an engine still
/// loading its model answers 503, for as long as the idle timeout allows; an engine that cannot
/// be reached, or answers 429 or another 5xx, gets the usual attempts.
async fn first_contact(
    client: &reqwest::Client,
    url: &str,
    options: &RemoteOptions,
) -> Result<Value, RemoteError> {
    let started = std::time::Instant::now();
    let mut failures = 0u32;
    loop {
        let error = match get_json(client, url).await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let status = match &error {
            RemoteError::Engine { status, .. } => *status,
            _ => return Err(error),
        };
        failures += 1;
        let loading = status == Some(503) && started.elapsed() < options.idle_timeout;
        let transient = status.is_none_or(|s| s == 429 || s >= 500);
        if !(loading || transient && failures < options.attempts.max(1)) {
            return Err(error);
        }
        let wait = (options.backoff * 2u32.pow(failures.min(8) - 1)).min(Duration::from_secs(5));
        tracing::warn!("{error}; trying again in {:.1}s", wait.as_secs_f64());
        tokio::time::sleep(wait).await;
    }
}

pub(super) async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, RemoteError> {
    answer_json(url, client.get(url).timeout(PROBE_TIMEOUT).send().await).await
}

pub(super) async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<Value, RemoteError> {
    let request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(PROBE_TIMEOUT)
        .body(body.to_string());
    answer_json(url, request.send().await).await
}

async fn answer_json(
    url: &str,
    response: reqwest::Result<reqwest::Response>,
) -> Result<Value, RemoteError> {
    let engine = |message: String, status: Option<u16>| RemoteError::Engine {
        url: url.to_string(),
        message,
        status,
    };
    let response = response.map_err(|e| engine(transport_error(&e), None))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| engine(transport_error(&e), None))?;
    if !status.is_success() {
        return Err(engine(
            format!("HTTP {status}: {}", llama_server::error_message(&text)),
            Some(status.as_u16()),
        ));
    }
    serde_json::from_str(&text).map_err(|e| {
        engine(
            format!("the answer is not JSON: {e}"),
            Some(status.as_u16()),
        )
    })
}

/// A transport error with its cause (reqwest's own message stops at "error sending request").
pub(crate) fn transport_error(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

fn file_stem(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.strip_suffix(".gguf").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_drops_v1_and_a_bad_url_is_named() {
        assert_eq!(
            root_url("http://127.0.0.1:8080/v1/").expect("a URL"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(root_url("http://h:1").expect("a URL"), "http://h:1");
        let e = root_url("ftp://h/v1").expect_err("not http").to_string();
        assert!(e.contains("ftp://h/v1") && e.contains("http://"), "{e}");
        assert!(root_url("not a url").is_err());
    }

    #[test]
    fn the_model_name_is_the_file_stem() {
        assert_eq!(
            file_stem("/models/qwen3-32b-q4_k_m.gguf"),
            "qwen3-32b-q4_k_m"
        );
        assert_eq!(file_stem("Qwen/Qwen3-32B"), "Qwen3-32B");
    }
}
