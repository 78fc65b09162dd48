//! Chat mode: a serving engine driven through its Chat Completions endpoint, for engines that do
//! not take token ids (hosted endpoints, SGLang), or when asked for.
//!
//! The engine renders the prompt with its own template, parses the model's thinking and calls
//! with its own parsers, and constrains what it chooses to. Kestrel sends the turn's messages,
//! tools and tool choice as they are, and turns the engine's answer back into the text Qwen
//! writes (`<think>` reasoning, the answer, `<tool_call>` blocks, tokenized locally), so that
//! the agent's parser, events and transcripts are the same in both modes. The thinking budget
//! is the engine's own field where it has one (llama-server's `reasoning_budget_tokens` with
//! Qwen's early-stop message, vLLM's `thinking_token_budget`); elsewhere Kestrel counts the
//! reasoning as it streams and ends the reply at the limit (the agent then asks for an answer
//! without thinking). What this mode cannot promise (exact prompt ids, a cache Kestrel can see,
//! resuming a broken stream, grammar-held arguments under `auto`) is said at connection.

use std::sync::Arc;

use kestrel_engine::Tokenizer;
use serde_json::Value;

use super::chat_stream::{ChatDriver, ChatInner};
use super::chat_wire::ChatDialect;
use super::{RemoteError, RemoteOptions, client, first_contact, get_json, root_url, spawn_runtime};
use crate::backend::{Backend, BackendError, Submission, TokenStream};

/// Positions assumed when the engine does not say (Qwen3's native context).
const ASSUMED_CONTEXT: usize = 32_768;

/// A serving engine reached through Chat Completions; clones share the connection pool.
#[derive(Clone)]
pub struct ChatEngine {
    inner: Arc<ChatInner>,
}

impl ChatEngine {
    /// Connects to the engine at `options.url` and asks what it serves; `tokenizer` (the served
    /// model's) counts tokens and records them.
    pub fn connect(tokenizer: Tokenizer, options: RemoteOptions) -> Result<Self, RemoteError> {
        let root = root_url(&options.url)?;
        let client = client(&options)?;
        let (runtime, stop) = spawn_runtime()?;
        let (dialect, model, context) = runtime.block_on(probe(&client, &root, &options))?;
        let engine_budget = runtime.block_on(takes_budget(&client, &root, dialect, &model));
        Ok(Self {
            inner: Arc::new(ChatInner {
                root,
                options,
                tokenizer: Arc::new(tokenizer),
                dialect,
                model,
                context,
                engine_budget,
                client,
                runtime,
                _stop: stop,
            }),
        })
    }

    /// What the connection found, for the log.
    pub fn info(&self) -> super::EngineInfo {
        let inner = &self.inner;
        super::EngineInfo {
            url: inner.root.clone(),
            kind: inner.dialect.name(),
            mode: "chat",
            model: inner.model.clone(),
            context: inner.context.unwrap_or(ASSUMED_CONTEXT),
            slots: 0,
            build: None,
            thinking_budget: match inner.dialect {
                ChatDialect::LlamaServer if inner.engine_budget => {
                    "the engine's reasoning_budget_tokens, with Qwen's early-stop text as its message"
                }
                ChatDialect::Vllm if inner.engine_budget => "the engine's thinking_token_budget",
                _ => {
                    "counted by Kestrel as the reasoning streams; at the limit the reply is ended and an answer asked for without thinking"
                }
            },
            tool_calls: "chat mode: the engine's template and tool-call parser; constrained only where the engine constrains tool_choice (required or named); arguments validated after the fact. Prompt ids are the engine's, not Kestrel's, and a broken stream cannot be resumed",
        }
    }
}

impl Backend for ChatEngine {
    fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    fn model_name(&self) -> &str {
        &self.inner.model
    }

    fn context_len(&self) -> usize {
        self.inner.context.unwrap_or(ASSUMED_CONTEXT)
    }

    fn vocab_size(&self) -> usize {
        self.inner.tokenizer.inner().get_vocab_size(true)
    }

    fn submit(&self, submission: Submission) -> Result<TokenStream, BackendError> {
        if !submission.hooks.is_empty() {
            return Err(BackendError::Unsupported(
                "an engine in chat mode runs no per-token hooks; this generation needs one, which only the embedded engine runs".into(),
            ));
        }
        if submission.sampling.logprobs.is_some() {
            return Err(BackendError::Unsupported(
                "log-probabilities need token mode (an engine in chat mode returns them for its own tokens)".into(),
            ));
        }
        let (sender, stream) = TokenStream::channel();
        let driver = ChatDriver::new(self.inner.clone(), submission, sender)?;
        self.inner.runtime.spawn(driver.run());
        Ok(stream)
    }
}

/// Asks the server what it is and what it serves: its kind, the model name to send, and its
/// context when it says.
async fn probe(
    client: &reqwest::Client,
    root: &str,
    options: &RemoteOptions,
) -> Result<(ChatDialect, String, Option<usize>), RemoteError> {
    let models = first_contact(client, &format!("{root}/v1/models"), options).await?;
    let entries = models["data"].as_array().cloned().unwrap_or_default();
    let entry = match &options.model {
        Some(name) => entries
            .iter()
            .find(|m| m["id"].as_str() == Some(name))
            .cloned()
            .ok_or_else(|| RemoteError::Engine {
                url: format!("{root}/v1/models"),
                message: format!(
                    "it does not serve --engine-model {name:?} (it serves {})",
                    served(&entries)
                ),
                status: None,
            })?,
        None => entries
            .first()
            .cloned()
            .ok_or_else(|| RemoteError::Engine {
                url: format!("{root}/v1/models"),
                message: "it lists no model".into(),
                status: None,
            })?,
    };
    let model = entry["id"].as_str().unwrap_or_default().to_string();
    let owner = entry["owned_by"].as_str().unwrap_or_default();
    let props = get_json(client, &format!("{root}/props")).await.ok();
    let llama_context = props
        .as_ref()
        .and_then(|p| p.get("default_generation_settings"))
        .and_then(|s| s.get("n_ctx"))
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    let dialect = match owner {
        "vllm" => ChatDialect::Vllm,
        "sglang" => ChatDialect::Sglang,
        _ if llama_context.is_some() || owner == "llamacpp" => ChatDialect::LlamaServer,
        _ => ChatDialect::OpenAi,
    };
    let context = match dialect {
        ChatDialect::LlamaServer => llama_context,
        _ => entry["max_model_len"].as_u64().map(|n| n as usize),
    };
    Ok((dialect, model, context))
}

fn served(entries: &[Value]) -> String {
    let names: Vec<&str> = entries.iter().filter_map(|m| m["id"].as_str()).collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// Whether the engine takes a thinking budget per request: llama-server does; vLLM does when it
/// runs a reasoning parser (it refuses the field otherwise, which a one-token request shows).
async fn takes_budget(
    client: &reqwest::Client,
    root: &str,
    dialect: ChatDialect,
    model: &str,
) -> bool {
    match dialect {
        ChatDialect::LlamaServer => true,
        ChatDialect::Vllm => {
            let probe = serde_json::json!({
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 1,
                "thinking_token_budget": 1,
            });
            match super::post_json(client, &format!("{root}/v1/chat/completions"), &probe).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(
                        "engine {root} does not take thinking_token_budget ({e}); Kestrel counts the thinking itself (start vLLM with --reasoning-parser qwen3 for the engine's own budget)"
                    );
                    false
                }
            }
        }
        ChatDialect::Sglang | ChatDialect::OpenAi => false,
    }
}
