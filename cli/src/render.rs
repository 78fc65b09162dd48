//! Where an agent's events go: the terminal view (thinking dimmed on a terminal, tool calls and
//! their results marked, per-turn statistics and notes on stderr) or JSON Lines on stdout, and the
//! transcript.

use std::io::{IsTerminal, StdoutLock, Write};

use kestrel::agent::AgentEvent;
use serde_json::json;

use crate::transcript::Transcript;

/// Shows a task's events as they come. A write error does not stop the task: the first one is
/// kept and [`EventSink::finish`] returns it.
pub(crate) struct EventSink<'a> {
    out: StdoutLock<'static>,
    transcript: Option<&'a mut Transcript>,
    json: bool,
    color: bool,
    last_was_thinking: bool,
    error: Option<std::io::Error>,
}

impl<'a> EventSink<'a> {
    /// Events as JSON Lines when `json`, else the terminal view (coloured on a terminal).
    pub(crate) fn new(json: bool, transcript: Option<&'a mut Transcript>) -> Self {
        Self {
            out: std::io::stdout().lock(),
            transcript,
            json,
            color: !json && std::io::stdout().is_terminal(),
            last_was_thinking: false,
            error: None,
        }
    }

    /// Writes one event to the transcript and stdout, flushed.
    pub(crate) fn show(&mut self, event: &AgentEvent) {
        if let Some(t) = self.transcript.as_mut()
            && let Err(e) = t.line(&json!({"kind": "event", "event": event}))
        {
            self.error.get_or_insert(e);
        }
        let out = &mut self.out;
        let result = if self.json {
            serde_json::to_string(event)
                .map_err(std::io::Error::other)
                .and_then(|line| writeln!(out, "{line}"))
        } else {
            render(out, event, self.color, &mut self.last_was_thinking)
        };
        if let Err(e) = result.and_then(|()| out.flush()) {
            self.error.get_or_insert(e);
        }
    }

    /// The first write error, if any.
    pub(crate) fn finish(self) -> std::io::Result<()> {
        self.error.map_or(Ok(()), Err)
    }
}

/// Writes one event; `last_was_thinking` carries whether the previous event was thinking, to end
/// its line when something else follows.
fn render(
    out: &mut impl Write,
    event: &AgentEvent,
    color: bool,
    last_was_thinking: &mut bool,
) -> std::io::Result<()> {
    let (dim, reset) = if color {
        ("\x1b[2m", "\x1b[0m")
    } else {
        ("", "")
    };
    let was_thinking = std::mem::replace(
        last_was_thinking,
        matches!(event, AgentEvent::Thinking { .. }),
    );
    if was_thinking && !*last_was_thinking {
        writeln!(out)?;
    }
    match event {
        AgentEvent::Thinking { text } => write!(out, "{dim}{text}{reset}"),
        AgentEvent::Text { text } => write!(out, "{text}"),
        AgentEvent::ToolCall {
            name, arguments, ..
        } => writeln!(out, "\n→ {name} {arguments}"),
        AgentEvent::ToolResult { text, is_error, .. } => {
            let shown: String = text.chars().take(400).collect();
            let more = if shown.len() < text.len() { " …" } else { "" };
            let mark = if *is_error { "✗" } else { "←" };
            writeln!(
                out,
                "{dim}{mark} {}{more}{reset}",
                shown.replace('\n', "\n  ")
            )
        }
        AgentEvent::Turn(stats) => {
            eprintln!(
                "{dim}[turn {}: {} prompt tokens ({} reused, {} prefilled at {:.1} tok/s), {} generated at {:.1} tok/s, ended by {}]{reset}",
                stats.turn,
                stats.prompt_tokens,
                stats.reused_tokens,
                stats.prefilled_tokens,
                stats.prompt_tokens_per_s,
                stats.generated_tokens,
                stats.decode_tokens_per_s,
                serde_json::to_value(stats.finish_reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            );
            Ok(())
        }
        AgentEvent::Progress {
            server,
            progress,
            total,
            message,
        } => {
            let line = progress_line(server, *progress, *total, message.as_deref());
            eprintln!("{dim}{line}{reset}");
            Ok(())
        }
        AgentEvent::Note { message } => {
            eprintln!("note: {message}");
            Ok(())
        }
        AgentEvent::Final { .. } => writeln!(out),
    }
}

/// A server's progress on a call, as one line: `server: progress 3/5 what it says`.
pub(crate) fn progress_line(
    server: &str,
    progress: f64,
    total: Option<f64>,
    message: Option<&str>,
) -> String {
    let total = total.map(|t| format!("/{t}")).unwrap_or_default();
    let message = message.map(|m| format!(" {m}")).unwrap_or_default();
    format!("{server}: progress {progress}{total}{message}")
}
