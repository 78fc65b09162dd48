//! Tool calls from a turn to their servers and back.
//!
//! A call is resolved once, against the tool snapshot its task was offered, to a (server, tool)
//! pair; a name the turn was not offered is refused. Arguments are checked against the tool's
//! schema, admitting only the properties it declares (as the constraint does), and a mismatch is
//! an error result naming the field. The policy then decides on that pair, a call repeating
//! itself is refused, and what remains is sent at once, while the model may still
//! be writing the next call. Results are collected in call order when the turn ends, and the
//! servers' progress notifications are reported while they are awaited; a cancelled task drops
//! the calls still in flight, which tells their servers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::runtime::Handle;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::Instrument;

use kestrel_prompts::constrain::strict_arguments;

use super::AgentEvent;
use super::cancel::Cancel;
use super::policy::{Approval, ApprovalPolicy, ApprovalRequest, Approver};
use crate::mcp::{CallError, HostEvent, McpHost, ToolOutcome, ToolSnapshot};

/// A call's result, now (refused, unreadable) or later (sent to its server).
pub(crate) enum Pending {
    Now { text: String, is_error: bool },
    Later(JoinHandle<Result<ToolOutcome, CallError>>),
}

/// One call of a turn.
pub(crate) struct Call {
    pub(crate) index: usize,
    /// The name as the model wrote it (empty when the call could not be read).
    pub(crate) name: String,
    pub(crate) arguments: Map<String, Value>,
    pub(crate) pending: Pending,
    /// Refused as a repeat: the turn is cut here, the model is looping.
    pub(crate) repeated: bool,
}

/// A call's result as the model will read it.
pub(crate) struct CallResult {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) text: String,
    pub(crate) is_error: bool,
    pub(crate) elapsed: Duration,
}

/// Sends a task's calls: its host, runtime, tools, policy and repeat count.
pub(crate) struct Dispatcher {
    pub(crate) host: Arc<McpHost>,
    pub(crate) runtime: Handle,
    pub(crate) snapshot: ToolSnapshot,
    pub(crate) policy: ApprovalPolicy,
    pub(crate) approver: Option<Approver>,
    /// Identical consecutive calls sent before the model is told to stop repeating.
    pub(crate) max_repeats: usize,
    /// Whether a repeat of a call that was answered is sent too.
    pub(crate) resend_answered: bool,
    pub(crate) repeats: RepeatGuard,
    /// The host's events since the task started (progress of its calls).
    pub(crate) events: broadcast::Receiver<HostEvent>,
}

impl Dispatcher {
    /// A call the parser completed: refused at once, or sent to its server.
    pub(crate) fn start(
        &mut self,
        index: usize,
        name: String,
        arguments: Map<String, Value>,
    ) -> Call {
        let (pending, repeated) = self.pending(&name, &arguments);
        Call {
            index,
            name,
            arguments,
            pending,
            repeated,
        }
    }

    fn pending(&mut self, name: &str, arguments: &Map<String, Value>) -> (Pending, bool) {
        let refused = |text: String| Pending::Now {
            text: format!("Not called: {text}"),
            is_error: true,
        };
        match (self.repeats).record(name, arguments, self.max_repeats, self.resend_answered) {
            Repeat::New => {}
            Repeat::OfAnswered => {
                let text = format!(
                    "this exact call ({name} with the same arguments) was just made and its result is above. Answer from that result, or call with different arguments."
                );
                return (refused(text), true);
            }
            Repeat::Limit(times) => {
                let text = format!(
                    "this exact call ({name} with the same arguments) was already made {times} times in a row, and its results are above. Use them, call with different arguments, or answer."
                );
                return (refused(text), true);
            }
        }
        let tool = match self.snapshot.resolve(name) {
            Ok(tool) => tool.clone(),
            Err(e) => return (refused(e.to_string()), false),
        };
        let arguments = Value::Object(arguments.clone());
        // A refusal comes first (arguments do not matter then); a person is asked only about a
        // call whose arguments are valid.
        let decision = self.policy.decide(&tool);
        let request = ApprovalRequest::Call {
            tool: &tool,
            arguments: &arguments,
        };
        let asks_a_person = matches!(decision, Approval::Ask(_)) && self.approver.is_some();
        if !asks_a_person
            && let Err(reason) = ApprovalPolicy::settle(decision.clone(), None, request)
        {
            return (refused(reason), false);
        }
        if let Err(problem) = check_arguments(&tool.input_schema, &arguments) {
            return (
                Pending::Now {
                    text: format!("Error: invalid arguments for `{name}`: {problem}"),
                    is_error: true,
                },
                false,
            );
        }
        if asks_a_person
            && let Err(reason) = ApprovalPolicy::settle(decision, self.approver.as_ref(), request)
        {
            return (refused(reason), false);
        }
        let host = self.host.clone();
        // A child of the turn's span (the caller's).
        let span = tracing::info_span!("tool_call", server = %tool.server, tool = %tool.tool);
        let call = self.runtime.spawn(
            async move {
                let outcome = host.call_offered(&tool, arguments).await;
                tracing::info!(
                    failed = !matches!(&outcome, Ok(o) if !o.rendered.is_error),
                    "tool call done"
                );
                outcome
            }
            .instrument(span),
        );
        (Pending::Later(call), false)
    }

    /// The results of a turn's calls, in order; `None` when `cancel` is raised first (the calls
    /// still in flight are then dropped).
    pub(crate) fn collect(
        &mut self,
        calls: Vec<Call>,
        cancel: &Cancel,
        on_event: &mut dyn FnMut(&AgentEvent),
    ) -> Option<Vec<CallResult>> {
        let mut results = Vec::new();
        let mut calls = calls.into_iter();
        while let Some(call) = calls.next() {
            // Whether the call got no answer from its server (a timeout, a crash, a lost
            // connection): only then may the same call be tried again.
            let mut unanswered = false;
            let (text, is_error, elapsed) = match call.pending {
                Pending::Now { text, is_error } => (text, is_error, Duration::ZERO),
                Pending::Later(handle) => match self.wait(handle, cancel, on_event) {
                    None => {
                        abort(calls.collect());
                        return None;
                    }
                    Some(Ok(Ok(out))) => {
                        let text = if out.rendered.is_error {
                            format!("Error: {}", out.rendered.text)
                        } else {
                            out.rendered.text
                        };
                        (text, out.rendered.is_error, out.elapsed)
                    }
                    Some(Ok(Err(e))) => {
                        unanswered = true;
                        (format!("Error: {e}"), true, Duration::ZERO)
                    }
                    Some(Err(e)) => {
                        unanswered = true;
                        (
                            format!("Error: the call was lost: {e}"),
                            true,
                            Duration::ZERO,
                        )
                    }
                },
            };
            self.repeats.settle(&call.name, &call.arguments, unanswered);
            results.push(CallResult {
                index: call.index,
                name: call.name,
                text,
                is_error,
                elapsed,
            });
        }
        Some(results)
    }

    fn wait(
        &mut self,
        mut handle: JoinHandle<Result<ToolOutcome, CallError>>,
        cancel: &Cancel,
        on_event: &mut dyn FnMut(&AgentEvent),
    ) -> Option<Result<Result<ToolOutcome, CallError>, tokio::task::JoinError>> {
        let runtime = self.runtime.clone();
        let events = &mut self.events;
        runtime.block_on(async {
            let mut listening = true;
            let mut report = |event: HostEvent| {
                if let HostEvent::Progress {
                    server,
                    progress,
                    total,
                    message,
                    ..
                } = event
                {
                    on_event(&AgentEvent::Progress {
                        server,
                        progress,
                        total,
                        message,
                    });
                }
            };
            loop {
                tokio::select! {
                    // Progress first: what the server sent before its result shows before it.
                    biased;
                    event = events.recv(), if listening => match event {
                        Ok(event) => report(event),
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => listening = false,
                    },
                    result = &mut handle => {
                        while let Ok(event) = events.try_recv() {
                            report(event);
                        }
                        return Some(result);
                    }
                    () = cancel.cancelled() => {
                        handle.abort();
                        return None;
                    }
                }
            }
        })
    }
}

/// Checks arguments against a tool's input schema, closed to undeclared properties; the error
/// names each field that fails. A schema the validator cannot compile is the server's problem
/// and checks nothing.
pub(crate) fn check_arguments(schema: &Value, arguments: &Value) -> Result<(), String> {
    let Ok(validator) = jsonschema::validator_for(&strict_arguments(schema)) else {
        return Ok(());
    };
    let problems: Vec<String> = validator
        .iter_errors(arguments)
        .map(|e| {
            let path = e.instance_path().to_string();
            if path.is_empty() {
                e.to_string()
            } else {
                format!("{path}: {e}")
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Drops the calls of a cancelled turn that are still in flight.
pub(crate) fn abort(calls: Vec<Call>) {
    for call in calls {
        if let Pending::Later(handle) = call.pending {
            handle.abort();
        }
    }
}

/// Watches for identical consecutive calls (same tool, same arguments) over a task. A call that
/// repeats one that was answered, with a result or with the tool's error, brings nothing new:
/// the answer is right above (or will be, while the first one runs). A call that repeats one that
/// got no answer (a timeout, a crash) is a retry, sent while the call has been made fewer than
/// `max_repeats` times in a row.
#[derive(Debug, Default)]
pub(crate) struct RepeatGuard {
    last: Option<(String, Map<String, Value>)>,
    /// How many times in a row the last call was sent.
    count: usize,
    /// Whether the last call's latest run got no answer (`false` while it runs).
    unanswered: bool,
}

/// What [`RepeatGuard::record`] makes of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// Not a repeat, or a retry still allowed: send it.
    New,
    /// The same call was just answered (or is in flight).
    OfAnswered,
    /// The same call was sent this many times in a row, the most allowed.
    Limit(usize),
}

impl RepeatGuard {
    /// Records a call and says whether it may be sent.
    fn record(
        &mut self,
        name: &str,
        arguments: &Map<String, Value>,
        max_repeats: usize,
        resend_answered: bool,
    ) -> Repeat {
        match &self.last {
            Some((n, a)) if n == name && a == arguments => {
                if !self.unanswered && !resend_answered {
                    return Repeat::OfAnswered;
                }
                if self.count >= max_repeats {
                    return Repeat::Limit(self.count);
                }
                self.count += 1;
            }
            _ => {
                self.last = Some((name.to_string(), arguments.clone()));
                self.count = 1;
            }
        }
        self.unanswered = false;
        Repeat::New
    }

    /// Records how a call ended: `unanswered` when its server gave no answer.
    fn settle(&mut self, name: &str, arguments: &Map<String, Value>, unanswered: bool) {
        if self
            .last
            .as_ref()
            .is_some_and(|(n, a)| n == name && a == arguments)
        {
            self.unanswered = unanswered;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_repeat_of_an_answered_call_is_refused_and_an_unanswered_one_retried_up_to_the_limit() {
        let mut g = RepeatGuard::default();
        let a1 = args(json!({"a": 1}));
        let a2 = args(json!({"a": 2}));
        assert_eq!(g.record("t", &a1, 2, false), Repeat::New);
        // Still in flight, or answered (a result or the tool's error): the answer is above.
        assert_eq!(g.record("t", &a1, 2, false), Repeat::OfAnswered);
        g.settle("t", &a1, false);
        assert_eq!(g.record("t", &a1, 2, false), Repeat::OfAnswered);
        assert_eq!(g.record("t", &a2, 2, false), Repeat::New, "other arguments");
        g.settle("t", &a2, true);
        assert_eq!(g.record("t", &a2, 2, false), Repeat::New, "a retry");
        g.settle("t", &a2, true);
        assert_eq!(g.record("t", &a2, 2, false), Repeat::Limit(2));
        assert_eq!(g.record("u", &a2, 2, false), Repeat::New, "other tool");
        assert_eq!(g.record("t", &a1, 2, false), Repeat::New, "not in a row");
        // How another call ended does not change the last one's.
        g.settle("u", &a2, true);
        assert_eq!(g.record("t", &a1, 2, false), Repeat::OfAnswered);
    }

    #[test]
    fn answered_calls_may_be_resent_up_to_the_limit() {
        let mut g = RepeatGuard::default();
        let a = args(json!({}));
        for _ in 0..3 {
            assert_eq!(g.record("t", &a, 3, true), Repeat::New);
            g.settle("t", &a, false);
        }
        assert_eq!(g.record("t", &a, 3, true), Repeat::Limit(3));
        assert_eq!(g.record("t", &a, usize::MAX, true), Repeat::New, "no limit");
    }

    #[test]
    fn arguments_must_match_the_schema_and_name_the_field() {
        let schema = json!({"type": "object", "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"]});
        assert_eq!(
            check_arguments(&schema, &json!({"timezone": "Asia/Tokyo"})),
            Ok(())
        );
        let invented =
            check_arguments(&schema, &json!({"timezone": "UTC", "target_timezone": "x"}));
        assert!(
            invented
                .as_ref()
                .is_err_and(|e| e.contains("target_timezone")),
            "{invented:?}"
        );
        let wrong = check_arguments(&schema, &json!({"timezone": 9}));
        assert!(
            wrong.as_ref().is_err_and(|e| e.starts_with("/timezone")),
            "{wrong:?}"
        );
        let missing = check_arguments(&schema, &json!({}));
        assert!(
            missing.as_ref().is_err_and(|e| e.contains("timezone")),
            "{missing:?}"
        );
        let open = json!({"type": "object", "properties": {}, "additionalProperties": true});
        assert_eq!(check_arguments(&open, &json!({"anything": 1})), Ok(()));
    }

    #[test]
    fn a_call_is_resolved_against_the_offered_tools_only() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let root = tempfile::tempdir().expect("tmp");
        let text = json!({"roots": [root.path()], "mcpServers": {"files": {"builtin": "fs"}}});
        let config = crate::mcp::McpConfig::parse(
            &text.to_string(),
            false,
            std::path::Path::new("agent.json"),
        )
        .expect("config");
        let options = crate::mcp::HostOptions::from_config(&config);
        let host = Arc::new(runtime.block_on(McpHost::start(&config, options)));
        let everything = runtime.block_on(host.snapshot());
        assert!(everything.resolve("list_directory").is_ok());
        let dispatch = |snapshot: ToolSnapshot| {
            let mut dispatcher = Dispatcher {
                host: host.clone(),
                runtime: runtime.handle().clone(),
                snapshot,
                policy: ApprovalPolicy::default(),
                approver: None,
                max_repeats: 2,
                resend_answered: false,
                repeats: RepeatGuard::default(),
                events: host.subscribe(),
            };
            let call = dispatcher.start(0, "list_directory".into(), args(json!({"path": "."})));
            let results = dispatcher.collect(vec![call], &Cancel::new(), &mut |_| {});
            let result = results.and_then(|r| r.into_iter().next()).expect("result");
            (result.text, result.is_error)
        };
        let (text, is_error) = dispatch(everything);
        assert!(!is_error, "an offered tool runs: {text}");
        // The server has the tool, but this turn was not offered it: refused, not looked up.
        let (text, is_error) = dispatch(ToolSnapshot::default());
        assert!(is_error);
        assert_eq!(
            text,
            "Not called: no tool named `list_directory` is offered (offered: none)"
        );
        runtime.block_on(host.shutdown());
    }
}
