//! What a task reports: events as they happen, statistics per turn, and how it ended.

use kestrel_engine::SamplingParams;
use kestrel_prompts::constrain::ToolChoice;
use kestrel_prompts::messages::ChatRequest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use kestrel_prompts::messages::Message;

use crate::backend::FinishReason;

/// What a task reports as it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Thinking text.
    Thinking {
        /// The text.
        text: String,
    },
    /// Answer text.
    Text {
        /// The text.
        text: String,
    },
    /// A tool call the model made (dispatched at once unless refused).
    ToolCall {
        /// Turn number (from 1).
        turn: usize,
        /// Index within the turn.
        index: usize,
        /// Tool name as offered.
        name: String,
        /// Arguments.
        arguments: Value,
    },
    /// A tool call's result, as the model will read it.
    ToolResult {
        /// Turn number.
        turn: usize,
        /// Index within the turn.
        index: usize,
        /// Tool name.
        name: String,
        /// The text.
        text: String,
        /// Whether it is an error (tool error, refusal, failure).
        is_error: bool,
        /// Milliseconds the call took (0 when it was not dispatched).
        elapsed_ms: u64,
    },
    /// A server's progress on a call being awaited (`notifications/progress`).
    Progress {
        /// The server.
        server: String,
        /// Progress so far.
        progress: f64,
        /// The total, when known.
        total: Option<f64>,
        /// What the server says it is doing.
        message: Option<String>,
    },
    /// Statistics of a finished turn.
    Turn(TurnStats),
    /// Something the agent did on its own (a limit hit, context shrunk).
    Note {
        /// What happened.
        message: String,
    },
    /// The final answer.
    Final {
        /// The answer text.
        text: String,
    },
}

/// One turn's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnStats {
    /// Turn number (from 1).
    pub turn: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the cache.
    pub reused_tokens: usize,
    /// Prompt tokens run through the model.
    pub prefilled_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Of which thinking.
    pub thinking_tokens: usize,
    /// Prefill rate.
    pub prompt_tokens_per_s: f64,
    /// Decode rate.
    pub decode_tokens_per_s: f64,
    /// Tool calls made.
    pub tool_calls: usize,
    /// Why the generation ended (`cancelled` also when the agent cut a looping turn).
    pub finish_reason: FinishReason,
}

/// How a task ended.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    /// The final answer.
    pub answer: String,
    /// The whole conversation, tool calls and results included.
    pub messages: Vec<Message>,
    /// Per-turn statistics.
    pub turns: Vec<TurnStats>,
    /// The limit that ended the tool rounds, if one did.
    pub limited_by: Option<String>,
    /// Each turn's exact prompt and output tokens, for replay and audit.
    pub records: Vec<TurnRecord>,
}

/// One turn as it ran, enough to replay it (see [`crate::replay`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRecord {
    /// Turn number.
    pub turn: usize,
    /// What was rendered: messages, tools and the thinking switch.
    pub request: ChatRequest,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// Prompt ids whose KV came from the cache.
    pub reused_tokens: usize,
    /// The sampling the turn ran with.
    pub sampling: SamplingParams,
    /// The tool choice its constraint enforced (`None`: auto).
    pub tool_choice: Option<ToolChoice>,
    /// Whether the turn could open `<think>` itself.
    pub may_think: bool,
    /// The generated token ids (forced ones included).
    pub generated_ids: Vec<u32>,
    /// Positions in `generated_ids` that a hook forced (the budget's early stop, the end of a
    /// call) rather than the sampler chose.
    pub forced: Vec<usize>,
}
