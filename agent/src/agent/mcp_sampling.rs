//! MCP sampling answered by the local model.
//!
//! A server's `sampling/createMessage` request arrives on the async runtime while the agent may be
//! generating; it is one more generation on the agent's backend (on the embedded engine, a
//! sequence of its own beside the agent's), so it shares the weights but never the agent's state. Every request passes the approval policy first
//! (`SERVER/sampling`, ask by default): in a non-interactive run it is refused unless allowed.
//! The answer is written without thinking, since the server wants the message itself.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::policy::{ApprovalPolicy, ApprovalRequest, Approver};
use crate::backend::{Backend, Conversation, FinishReason, StreamItem, Submission};
use crate::mcp::{SamplingHandler, SamplingReply, SamplingRequest, SamplingStop};
use kestrel_prompts::constrain::ToolChoice;
use kestrel_prompts::messages::{ChatRequest, Message, Role};
use kestrel_prompts::template::ChatTemplate;
use kestrel_prompts::thinking::non_thinking_preset;

/// Longest answer a server may ask for, whatever its `maxTokens` says.
pub const MAX_SAMPLING_TOKENS: u32 = 4096;

/// A [`SamplingHandler`] that answers servers' sampling requests with the loaded model.
pub struct ModelSamplingHandler {
    backend: Arc<dyn Backend>,
    template: Arc<ChatTemplate>,
    policy: ApprovalPolicy,
    approver: Option<Approver>,
}

impl ModelSamplingHandler {
    /// Answers with `backend`, deciding with `policy` (and `approver`, in interactive runs).
    pub fn new(
        backend: Arc<dyn Backend>,
        policy: ApprovalPolicy,
        approver: Option<Approver>,
    ) -> Result<Self, super::AgentError> {
        let template = ChatTemplate::of(backend.tokenizer())?;
        Ok(Self {
            backend,
            template: Arc::new(template),
            policy,
            approver,
        })
    }

    fn answer(
        backend: &dyn Backend,
        template: &ChatTemplate,
        request: &SamplingRequest,
    ) -> Result<SamplingReply, String> {
        let mut messages = Vec::new();
        if let Some(system) = &request.system {
            messages.push(Message::text(Role::System, system));
        }
        for m in &request.messages {
            let role = if m.role == "assistant" {
                Role::Assistant
            } else {
                Role::User
            };
            messages.push(Message::text(role, &m.text));
        }
        let chat = ChatRequest {
            messages,
            tools: Vec::new(),
            enable_thinking: Some(false),
            add_generation_prompt: true,
        };
        let prompt = template
            .prompt(&chat, backend.tokenizer())
            .map_err(|e| format!("the request could not be rendered: {e}"))?;
        let mut sampling = non_thinking_preset();
        if let Some(t) = request.temperature.filter(|t| t.is_finite() && *t >= 0.0) {
            sampling.temperature = t;
        }
        let submission = Submission {
            conversation: Some(Conversation {
                request: chat,
                tool_choice: ToolChoice::Unset,
            }),
            ..Submission::new(
                prompt.ids,
                request.max_tokens.clamp(1, MAX_SAMPLING_TOKENS) as usize,
                sampling,
            )
        };
        let mut stream = backend
            .submit(submission)
            .map_err(|e| format!("generation failed: {e}"))?;
        let mut text = String::new();
        let mut stopped_by_sequence = false;
        let finished = loop {
            let item = stream
                .next_blocking()
                .ok_or_else(|| "generation failed: the stream ended early".to_string())?
                .map_err(|e| format!("generation failed: {e}"))?;
            let token = match item {
                StreamItem::Token(token) => token,
                StreamItem::Finished(finished) => break finished,
            };
            if stopped_by_sequence {
                continue;
            }
            text.push_str(&token.text);
            if let Some(at) = request
                .stop_sequences
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                text.truncate(at);
                stopped_by_sequence = true;
                stream.cancel();
            }
        };
        if !stopped_by_sequence {
            text.push_str(&finished.tail);
        }
        let stop = if stopped_by_sequence {
            SamplingStop::StopSequence
        } else if finished.reason == FinishReason::MaxTokens {
            SamplingStop::MaxTokens
        } else {
            SamplingStop::EndTurn
        };
        for end in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(stripped) = text.strip_suffix(end) {
                text.truncate(stripped.len());
            }
        }
        Ok(SamplingReply {
            text: text.trim().to_string(),
            model: backend.model_name().to_string(),
            stop,
        })
    }
}

impl SamplingHandler for ModelSamplingHandler {
    fn create_message(
        &self,
        server: &str,
        request: SamplingRequest,
    ) -> BoxFuture<'static, Result<SamplingReply, String>> {
        let decision = self.policy.decide_sampling(server);
        let (backend, template) = (self.backend.clone(), self.template.clone());
        let approver = self.approver.clone();
        let server = server.to_string();
        // The approver may block on a person, and generation owns a CPU: neither may run on the
        // runtime's workers.
        tokio::task::spawn_blocking(move || {
            let prompt = request.transcript();
            ApprovalPolicy::settle(
                decision,
                approver.as_ref(),
                ApprovalRequest::Sampling {
                    server: &server,
                    prompt: &prompt,
                },
            )
            .map_err(|reason| format!("sampling refused: {reason}"))?;
            Self::answer(backend.as_ref(), &template, &request)
        })
        .map(|joined| joined.unwrap_or_else(|e| Err(format!("sampling failed: {e}"))))
        .boxed()
    }
}
