//! Kestrel's agent as an MCP server: other hosts hand a sub-task to a local Qwen3 agent through one
//! tool, `run_task`, which runs the task with Kestrel's own MCP servers and returns the answer,
//! with the tool calls it made as structured content.
//!
//! A task runs on a thread of its own (the agent loop blocks) and reports through a channel: its
//! events (each finished turn becomes a progress notification when the caller asked for
//! progress), the approvals it needs, and its end. Nobody is at this server to approve a tool
//! that needs it, so the question goes to the calling host as an elicitation: sent as a request
//! on protocols up to 2025-11-25, or, on 2026-07-28, returned as an input-required result while
//! the task waits ("parked") under an opaque state until the host sends the call again with the
//! answer. A host that cannot elicit gets a refusal, as an unattended run would. Cancelling the
//! request cancels the task; at most `concurrency` tasks run at once, others wait their turn.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::handler::server::tool::{InputResponses, RequestState};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, ElicitRequest, ElicitRequestParams,
    ElicitationAction, ElicitationSchema, Implementation, InputRequest, InputRequiredResult,
    ProgressNotificationParam, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::agent::{Agent, AgentError, AgentEvent, AgentOptions, ApprovalRequest, Cancel};
use crate::backend::Backend;
use crate::mcp::McpHost;

/// How long a parked task waits for its caller to answer an approval before it is refused.
const PARK_LIMIT: Duration = Duration::from_secs(600);

/// `run_task`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunTaskArgs {
    /// What the agent should do, as a user would ask it.
    pub task: String,
    /// Most thinking tokens per turn (the server's setting by default).
    #[serde(default)]
    pub thinking_budget: Option<usize>,
    /// Most turns that call tools before the agent must answer (the server's setting by
    /// default).
    #[serde(default)]
    pub max_rounds: Option<usize>,
}

/// One tool call the agent made, as `run_task`'s structured content reports it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CallTrace {
    /// Turn number (from 1).
    pub turn: usize,
    /// The tool's name as the agent saw it.
    pub tool: String,
    /// The arguments it was called with.
    pub arguments: Value,
    /// What the agent read back.
    pub result: String,
    /// Whether that was an error (a refusal, a failure, a tool error).
    pub is_error: bool,
}

/// `run_task`'s structured content.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TaskReport {
    /// The agent's answer.
    pub answer: String,
    /// Turns the task took.
    pub turns: usize,
    /// The limit that ended the tool rounds, if one did.
    pub limited_by: Option<String>,
    /// Every tool call, in order.
    pub tool_calls: Vec<CallTrace>,
}

/// What a task's thread reports.
enum Signal {
    Event(AgentEvent),
    Approval {
        question: String,
        reply: oneshot::Sender<bool>,
    },
    Done(Result<TaskReportParts, AgentError>),
}

/// What the thread knows at the end (the trace is gathered on the server's side).
struct TaskReportParts {
    answer: String,
    turns: usize,
    limited_by: Option<String>,
}

/// A task on its thread.
struct Running {
    signals: mpsc::UnboundedReceiver<Signal>,
    cancel: Cancel,
    trace: Vec<CallTrace>,
    /// The approval waiting for the caller's answer (while parked).
    pending: Option<oneshot::Sender<bool>>,
    /// Its place among the tasks that may run at once.
    _slot: OwnedSemaphorePermit,
}

struct Shared {
    backend: Arc<dyn Backend>,
    host: Arc<McpHost>,
    runtime: Handle,
    options: AgentOptions,
    slots: Arc<Semaphore>,
    parked: Mutex<HashMap<String, Running>>,
    next_state: AtomicU64,
}

/// The MCP server: clone it per connection (all clones share the tasks and their slots).
#[derive(Clone)]
pub struct TaskServer {
    shared: Arc<Shared>,
}

impl TaskServer {
    /// A server running tasks on `backend` with the tools of `host` (its MCP calls on `runtime`),
    /// with `options` unless a call overrides them, `concurrency` tasks at once.
    pub fn new(
        backend: Arc<dyn Backend>,
        host: Arc<McpHost>,
        runtime: Handle,
        options: AgentOptions,
        concurrency: usize,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                backend,
                host,
                runtime,
                options,
                slots: Arc::new(Semaphore::new(concurrency.max(1))),
                parked: Mutex::default(),
                next_state: AtomicU64::new(1),
            }),
        }
    }

    /// Starts `args` on a thread of its own once a slot is free.
    async fn start(&self, args: RunTaskArgs) -> Result<Running, ErrorData> {
        let slot = self.shared.slots.clone().acquire_owned().await;
        let slot = slot.map_err(|_| ErrorData::internal_error("the server is stopping", None))?;
        let mut options = self.shared.options.clone();
        if let Some(budget) = args.thinking_budget {
            options.budget.per_turn = Some(budget);
        }
        if let Some(rounds) = args.max_rounds {
            options.max_rounds = rounds;
        }
        let shared = &self.shared;
        let mut agent = Agent::with_backend(
            shared.backend.clone(),
            shared.host.clone(),
            shared.runtime.clone(),
            options,
        )
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let (tx, signals) = mpsc::unbounded_channel();
        let asking = tx.clone();
        agent.set_approver(Arc::new(move |request: ApprovalRequest<'_>| {
            let (reply, answer) = oneshot::channel();
            let question = approval_question(&request);
            // A task whose caller is gone has nobody to approve it.
            asking.send(Signal::Approval { question, reply }).is_ok()
                && answer.blocking_recv().unwrap_or(false)
        }));
        let cancel = agent.canceller();
        std::thread::spawn(move || {
            let events = tx.clone();
            let outcome = agent.run(&args.task, &mut |event| {
                let _ = events.send(Signal::Event(event.clone()));
            });
            let parts = outcome.map(|o| TaskReportParts {
                answer: o.answer,
                turns: o.turns.len(),
                limited_by: o.limited_by,
            });
            let _ = tx.send(Signal::Done(parts));
        });
        Ok(Running {
            signals,
            cancel,
            trace: Vec::new(),
            pending: None,
            _slot: slot,
        })
    }

    /// Follows a task until it ends, or parks it until its caller answers an approval.
    async fn follow(
        &self,
        mut task: Running,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let progress = context.meta.get_progress_token();
        let in_results = context
            .protocol_version()
            .is_some_and(|v| !v.has_initialize());
        let can_elicit = context
            .client_capabilities()
            .is_some_and(|c| c.elicitation.is_some());
        loop {
            let signal = tokio::select! {
                signal = task.signals.recv() => signal,
                () = context.ct.cancelled() => {
                    task.cancel.cancel();
                    return Err(ErrorData::internal_error("the task was cancelled", None));
                }
            };
            match signal {
                Some(Signal::Event(event)) => {
                    record(&mut task.trace, &event);
                    if let (Some(token), AgentEvent::Turn(turn)) = (&progress, &event) {
                        let mut note =
                            ProgressNotificationParam::new(token.clone(), turn.turn as f64);
                        note.message = Some(format!(
                            "turn {} done ({} tokens generated)",
                            turn.turn, turn.generated_tokens
                        ));
                        // A caller that stopped listening still gets its answer.
                        let _ = context.peer.notify_progress(note).await;
                    }
                }
                Some(Signal::Approval { question, reply }) if can_elicit && in_results => {
                    task.pending = Some(reply);
                    return Ok(self.park(task, question).into());
                }
                Some(Signal::Approval { question, reply }) if can_elicit => {
                    let asked = context
                        .peer
                        .create_elicitation(approval_form(&question))
                        .await;
                    let approved = asked.is_ok_and(|answer| {
                        answer.action == ElicitationAction::Accept
                            && answer.content.is_some_and(|c| c["approve"] == true)
                    });
                    let _ = reply.send(approved);
                }
                Some(Signal::Approval { reply, .. }) => {
                    let _ = reply.send(false);
                }
                Some(Signal::Done(Ok(parts))) => {
                    let report = TaskReport {
                        answer: parts.answer,
                        turns: parts.turns,
                        limited_by: parts.limited_by,
                        tool_calls: std::mem::take(&mut task.trace),
                    };
                    let structured = serde_json::to_value(&report).unwrap_or(Value::Null);
                    let mut result =
                        CallToolResult::success(vec![ContentBlock::text(report.answer)]);
                    result.structured_content = Some(structured);
                    return Ok(result.into());
                }
                Some(Signal::Done(Err(error))) => {
                    let text = format!("the task failed: {error}");
                    return Ok(CallToolResult::error(vec![ContentBlock::text(text)]).into());
                }
                None => {
                    return Err(ErrorData::internal_error(
                        "the task ended without an answer",
                        None,
                    ));
                }
            }
        }
    }

    /// Keeps `task` until its caller answers `question` (or [`PARK_LIMIT`] passes).
    fn park(&self, task: Running, question: String) -> InputRequiredResult {
        let state = format!(
            "task-{}",
            self.shared.next_state.fetch_add(1, Ordering::SeqCst)
        );
        self.parked_tasks().insert(state.clone(), task);
        let (shared, key) = (self.shared.clone(), state.clone());
        self.shared.runtime.spawn(async move {
            tokio::time::sleep(PARK_LIMIT).await;
            // Dropping it refuses the approval; the task then goes on to an answer nobody reads.
            let abandoned = shared.parked.lock().ok().and_then(|mut p| p.remove(&key));
            drop(abandoned);
        });
        let request = InputRequest::Elicitation(ElicitRequest::new(approval_form(&question)));
        let requests = [("approval".to_string(), request)].into_iter().collect();
        InputRequiredResult::new(Some(requests), Some(state))
    }

    fn parked_tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.shared.parked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a person is asked to approve.
fn approval_question(request: &ApprovalRequest<'_>) -> String {
    match request {
        ApprovalRequest::Call { tool, arguments } => format!(
            "Kestrel's agent wants to call `{}` (server `{}`) with {arguments}. Approve?",
            tool.tool, tool.server
        ),
        ApprovalRequest::Sampling { server, prompt } => format!(
            "MCP server `{server}` asks Kestrel's model to write a message for:\n{prompt}Approve?"
        ),
    }
}

/// One required yes-or-no field, `approve`, no by default.
fn approval_form(question: &str) -> ElicitRequestParams {
    let schema = ElicitationSchema::builder()
        .required_bool_with("approve", |b| b.title("Approve").with_default(false))
        .build_unchecked();
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: question.to_string(),
        requested_schema: schema,
    }
}

/// Adds a call or its result to the trace.
fn record(trace: &mut Vec<CallTrace>, event: &AgentEvent) {
    match event {
        AgentEvent::ToolCall {
            turn,
            name,
            arguments,
            ..
        } => trace.push(CallTrace {
            turn: *turn,
            tool: name.clone(),
            arguments: arguments.clone(),
            result: String::new(),
            is_error: false,
        }),
        AgentEvent::ToolResult {
            turn,
            name,
            text,
            is_error,
            ..
        } => {
            let open = trace
                .iter_mut()
                .rev()
                .find(|c| c.turn == *turn && c.tool == *name && c.result.is_empty());
            if let Some(call) = open {
                call.result = text.clone();
                call.is_error = *is_error;
            }
        }
        _ => {}
    }
}

#[tool_router]
impl TaskServer {
    /// Runs a task with Kestrel's local Qwen3 agent and its MCP tools; returns the answer, and
    /// the tool calls it made as structured content.
    #[tool(
        description = "Hand a task to Kestrel's local Qwen3 agent, which works on it with its own MCP tools and returns its answer (and the tool calls it made as structured content).",
        output_schema = rmcp::handler::server::common::schema_for_output::<TaskReport>()
    )]
    async fn run_task(
        &self,
        Parameters(args): Parameters<RunTaskArgs>,
        RequestState(state): RequestState,
        InputResponses(answers): InputResponses,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let task = match state {
            None => self.start(args).await?,
            Some(state) => {
                let Some(mut task) = self.parked_tasks().remove(&state) else {
                    return Err(ErrorData::invalid_params(
                        format!("no task is waiting under `{state}` (it ended or expired)"),
                        None,
                    ));
                };
                let approval = answers.as_ref().and_then(|a| a.get("approval"));
                let approved = approval
                    .is_some_and(|a| a["action"] == "accept" && a["content"]["approve"] == true);
                if let Some(reply) = task.pending.take() {
                    let _ = reply.send(approved);
                }
                task
            }
        };
        self.follow(task, &context).await
    }
}

#[tool_handler]
impl ServerHandler for TaskServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("kestrel", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "A local Qwen3 agent with its own MCP tools: give it a self-contained task with run_task.",
            )
    }
}
