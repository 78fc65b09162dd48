//! The output items of one response, built from the reply's deltas as they come, with the stream
//! events that announce them.
//!
//! One item is open at a time: reasoning, a message, or a call. A call is a `function_call` for
//! the client to run, an `mcp_call` the server runs (its item stays in progress until the
//! outcome is in, see [`Items::finish_call`]), or an `mcp_approval_request` when the call waits
//! for the client's approval. Each round of the model's work (one reply) also becomes the
//! assistant message that continues the conversation ([`Items::take_round`]).

use std::sync::Arc;

use kestrel::hosted::{HostedOutcome, HostedTools};
use kestrel::prompts::messages::{Content, FunctionCall, Message, Role, ToolCall};
use serde_json::{Value, json};

use super::mcp::complete_call;
use super::signature::Signer;

/// The output items of one response: the one open now and those finished.
pub(super) struct Items {
    base: String,
    signer: Arc<Signer>,
    sealed: bool,
    hosted: Option<Arc<HostedTools>>,
    open: Option<Open>,
    pub(super) output: Vec<Value>,
    /// What this round said, for the conversation.
    reasoning: String,
    text: String,
    calls: Vec<ToolCall>,
    /// This round's calls the server runs, and what else it asked.
    round: Round,
    /// Calls made in the whole response.
    call_count: usize,
    /// Rounds finished.
    rounds_done: usize,
    /// The calls the server ran or refused in this response (name and arguments).
    pub(super) ran: Vec<(String, Value)>,
}

/// What one round of the model's work left to do.
#[derive(Default)]
pub(super) struct Round {
    /// The assistant message it wrote.
    pub(super) message: Option<Message>,
    /// Calls for the server to run.
    pub(super) hosted: Vec<HostedCall>,
    /// Calls for the client to run.
    pub(super) client_calls: usize,
    /// Calls waiting for the client's approval.
    pub(super) approvals: usize,
}

/// A call the server runs: its item's place, id, name and arguments.
pub(super) struct HostedCall {
    pub(super) index: usize,
    pub(super) id: String,
    pub(super) name: String,
    pub(super) arguments: Value,
    /// It repeats a call made before in this response: the model is looping, and it is not
    /// sent again.
    pub(super) repeat: bool,
}

/// Who runs a call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Client,
    Server,
    NeedsApproval,
}

enum Open {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
    },
    /// A call, its arguments as they come.
    Call {
        kind: CallKind,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl Items {
    pub(super) fn new(
        response_id: &str,
        signer: Arc<Signer>,
        sealed: bool,
        hosted: Option<Arc<HostedTools>>,
    ) -> Self {
        Self {
            base: response_id.trim_start_matches("resp_").to_string(),
            signer,
            sealed,
            hosted,
            open: None,
            output: Vec::new(),
            reasoning: String::new(),
            text: String::new(),
            calls: Vec::new(),
            round: Round::default(),
            call_count: 0,
            ran: Vec::new(),
            rounds_done: 0,
        }
    }

    pub(super) fn item_id(&self, prefix: &str) -> String {
        format!("{prefix}_{}_{}", self.base, self.output.len())
    }

    /// A call's id, which names its round: calls of one round read back as one message.
    fn call_item_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}_{}_r{}_{}",
            self.base,
            self.rounds_done,
            self.output.len()
        )
    }

    /// The server label of a tool the server runs.
    fn label(&self, name: &str) -> Option<String> {
        let tool = self.hosted.as_ref()?.find(name)?;
        Some(tool.tool.server.clone())
    }

    /// Adds a finished item (one the server made itself: a tool listing, an approved call).
    pub(super) fn push_done(&mut self, item: Value) -> Vec<Value> {
        let at = self.output.len();
        let sent = vec![
            json!({"type": "response.output_item.added", "output_index": at, "item": item}),
            json!({"type": "response.output_item.done", "output_index": at, "item": item}),
        ];
        self.output.push(item);
        sent
    }

    /// The events for one of [`Answer`](super::answer::Answer)'s deltas.
    pub(super) fn take(&mut self, delta: &Value) -> Vec<Value> {
        let mut sent = Vec::new();
        let index = |items: &Self| items.output.len();
        if let Some(text) = delta.get("reasoning_content").and_then(Value::as_str) {
            if !matches!(self.open, Some(Open::Reasoning { .. })) {
                sent.extend(self.close());
                let id = self.item_id("rs");
                sent.push(
                    json!({"type": "response.output_item.added", "output_index": index(self),
                    "item": {"type": "reasoning", "id": id, "summary": [], "content": [],
                             "status": "in_progress"}}),
                );
                self.open = Some(Open::Reasoning {
                    id,
                    text: String::new(),
                });
            }
            if let Some(Open::Reasoning { id, text: all }) = &mut self.open {
                all.push_str(text);
                sent.push(
                    json!({"type": "response.reasoning_text.delta", "item_id": id,
                    "output_index": self.output.len(), "content_index": 0, "delta": text}),
                );
            }
            self.reasoning.push_str(text);
        }
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !matches!(self.open, Some(Open::Message { .. })) {
                sent.extend(self.close());
                let id = self.item_id("msg");
                sent.push(
                    json!({"type": "response.output_item.added", "output_index": index(self),
                    "item": {"type": "message", "id": id, "role": "assistant",
                             "status": "in_progress", "content": []}}),
                );
                sent.push(json!({"type": "response.content_part.added", "item_id": id,
                    "output_index": index(self), "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}));
                self.open = Some(Open::Message {
                    id,
                    text: String::new(),
                });
            }
            if let Some(Open::Message { id, text: all }) = &mut self.open {
                all.push_str(text);
                sent.push(json!({"type": "response.output_text.delta", "item_id": id,
                    "output_index": self.output.len(), "content_index": 0, "delta": text,
                    "logprobs": []}));
            }
            self.text.push_str(text);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}")
                .to_string();
            // A streamed call: its first delta has the name and no arguments yet, the next ones
            // only arguments.
            if call.get("id").is_some() {
                let name = call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                sent.extend(self.open_call(name));
            }
            sent.extend(self.arguments(&arguments));
            if call.get("id").is_some() && !arguments.is_empty() {
                // A call sent whole: its arguments came in one piece, and it is done.
                sent.extend(self.close());
            }
        }
        sent
    }

    /// Opens a call item for `name`.
    fn open_call(&mut self, name: &str) -> Vec<Value> {
        let mut sent = self.close();
        let label = self.label(name);
        let kind = match (&label, &self.hosted) {
            (None, _) | (_, None) => CallKind::Client,
            (Some(_), Some(hosted)) if hosted.find(name).is_some_and(|t| t.needs_approval) => {
                CallKind::NeedsApproval
            }
            (Some(_), Some(_)) => CallKind::Server,
        };
        let client_call_id = format!("call_{}_{}", self.base, self.call_count);
        let (id, item) = match kind {
            CallKind::Client => {
                let id = self.item_id("fc");
                let call_id = &client_call_id;
                let item = json!({"type": "function_call", "id": id, "call_id": call_id,
                    "name": name, "arguments": "", "status": "in_progress"});
                (id, Some(item))
            }
            CallKind::Server => {
                let id = self.call_item_id("mcp");
                let item = json!({"type": "mcp_call", "id": id, "server_label": label,
                    "name": name, "arguments": "", "status": "in_progress"});
                (id, Some(item))
            }
            // Announced once complete: a client approves whole calls.
            CallKind::NeedsApproval => (self.call_item_id("mcpr"), None),
        };
        if let Some(item) = item {
            sent.push(json!({"type": "response.output_item.added",
                "output_index": self.output.len(), "item": item}));
        }
        let call_id = match kind {
            CallKind::Client => client_call_id,
            _ => id.clone(),
        };
        self.call_count += 1;
        self.open = Some(Open::Call {
            kind,
            id,
            call_id,
            name: name.to_string(),
            arguments: String::new(),
        });
        sent
    }

    /// More of the open call's arguments.
    fn arguments(&mut self, piece: &str) -> Vec<Value> {
        let at = self.output.len();
        let Some(Open::Call {
            kind,
            id,
            arguments,
            ..
        }) = &mut self.open
        else {
            return Vec::new();
        };
        arguments.push_str(piece);
        let event = match kind {
            CallKind::Client => "response.function_call_arguments.delta",
            CallKind::Server => "response.mcp_call_arguments.delta",
            CallKind::NeedsApproval => return Vec::new(),
        };
        if piece.is_empty() {
            return Vec::new();
        }
        vec![json!({"type": event, "item_id": id, "output_index": at, "delta": piece})]
    }

    /// Finishes the open item.
    pub(super) fn close(&mut self) -> Vec<Value> {
        let at = self.output.len();
        match self.open.take() {
            None => Vec::new(),
            Some(Open::Call {
                kind,
                id,
                call_id,
                name,
                arguments,
            }) => {
                let parsed: Value = serde_json::from_str(&arguments).unwrap_or(json!({}));
                self.calls.push(ToolCall {
                    id: Some(call_id.clone()),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.clone(),
                        arguments: parsed.clone(),
                    },
                });
                let label = self.label(&name);
                let key = (name.clone(), parsed.clone());
                let repeat = kind != CallKind::Client && self.ran.contains(&key);
                let mut sent = Vec::new();
                if repeat && kind == CallKind::NeedsApproval {
                    // A repeat waits for no approval: it is refused at once, like any repeat.
                    // Held back for approval, it has not been announced yet.
                    sent.push(
                        json!({"type": "response.output_item.added", "output_index": at,
                        "item": {"type": "mcp_call", "id": id, "server_label": label,
                                 "name": name, "arguments": "", "status": "in_progress"}}),
                    );
                }
                let kind = if repeat { CallKind::Server } else { kind };
                if kind == CallKind::Server {
                    self.ran.push(key);
                }
                match kind {
                    CallKind::Client => {
                        self.round.client_calls += 1;
                        let done = json!({"type": "function_call", "id": id, "call_id": call_id,
                            "name": name, "arguments": arguments, "status": "completed"});
                        self.output.push(done.clone());
                        sent.extend([
                            json!({"type": "response.function_call_arguments.done", "item_id": id,
                                   "output_index": at, "name": name, "arguments": arguments}),
                            json!({"type": "response.output_item.done", "output_index": at,
                                   "item": done}),
                        ]);
                        sent
                    }
                    CallKind::Server => {
                        self.round.hosted.push(HostedCall {
                            index: at,
                            id: id.clone(),
                            name: name.clone(),
                            arguments: parsed,
                            repeat,
                        });
                        self.output.push(json!({"type": "mcp_call", "id": id,
                            "server_label": label, "name": name, "arguments": arguments,
                            "output": null, "error": null, "status": "in_progress"}));
                        sent.extend([
                            json!({"type": "response.mcp_call_arguments.done", "item_id": id,
                                   "output_index": at, "arguments": arguments}),
                            json!({"type": "response.mcp_call.in_progress", "item_id": id,
                                   "output_index": at}),
                        ]);
                        sent
                    }
                    CallKind::NeedsApproval => {
                        self.round.approvals += 1;
                        self.push_done(json!({"type": "mcp_approval_request", "id": id,
                            "server_label": label, "name": name, "arguments": arguments}))
                    }
                }
            }
            Some(Open::Reasoning { id, text }) => {
                let mut item = json!({"type": "reasoning", "id": id, "summary": [],
                    "content": [{"type": "reasoning_text", "text": text}], "status": "completed"});
                if self.sealed {
                    item["encrypted_content"] = json!(self.signer.seal(&text));
                }
                let sent = vec![
                    json!({"type": "response.reasoning_text.done", "item_id": id,
                           "output_index": at, "content_index": 0, "text": text}),
                    json!({"type": "response.output_item.done", "output_index": at,
                           "item": item}),
                ];
                self.output.push(item);
                sent
            }
            Some(Open::Message { id, text }) => {
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                let item = json!({"type": "message", "id": id, "role": "assistant",
                    "status": "completed", "content": [part]});
                let sent = vec![
                    json!({"type": "response.output_text.done", "item_id": id,
                           "output_index": at, "content_index": 0, "text": text, "logprobs": []}),
                    json!({"type": "response.content_part.done", "item_id": id,
                           "output_index": at, "content_index": 0, "part": part}),
                    json!({"type": "response.output_item.done", "output_index": at,
                           "item": item}),
                ];
                self.output.push(item);
                sent
            }
        }
    }

    /// Ends the round: its assistant message and what it left to do. The next round starts
    /// empty.
    pub(super) fn take_round(&mut self) -> Round {
        let text = std::mem::take(&mut self.text);
        let reasoning = std::mem::take(&mut self.reasoning);
        let calls = std::mem::take(&mut self.calls);
        let mut round = std::mem::take(&mut self.round);
        self.rounds_done += 1;
        round.message = Some(Message {
            content: (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
            reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
            tool_calls: calls,
            ..Message::text(Role::Assistant, "")
        });
        round
    }

    /// Records a server-run call's outcome in its item; the events that finish the item.
    pub(super) fn finish_call(&mut self, call: &HostedCall, outcome: &HostedOutcome) -> Vec<Value> {
        let Some(item) = self.output.get_mut(call.index) else {
            return Vec::new();
        };
        complete_call(item, outcome);
        let event = if outcome.is_error() {
            "response.mcp_call.failed"
        } else {
            "response.mcp_call.completed"
        };
        vec![
            json!({"type": event, "item_id": call.id, "output_index": call.index}),
            json!({"type": "response.output_item.done", "output_index": call.index,
                   "item": item}),
        ]
    }
}
