//! The terminal view of an agent's events: thinking dimmed on a terminal, tool calls and their
//! results marked, per-turn statistics and notes on stderr.

use std::io::Write;

use kestrel::agent::AgentEvent;

/// Writes one event; `last_was_thinking` carries whether the previous event was thinking, to end
/// its line when something else follows.
pub(crate) fn render(
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
                "{dim}[turn {}: {} prompt tokens ({} reused, {} prefilled at {:.1} tok/s), {} generated at {:.1} tok/s]{reset}",
                stats.turn,
                stats.prompt_tokens,
                stats.reused_tokens,
                stats.prefilled_tokens,
                stats.prompt_tokens_per_s,
                stats.generated_tokens,
                stats.decode_tokens_per_s
            );
            Ok(())
        }
        AgentEvent::Note { message } => {
            eprintln!("note: {message}");
            Ok(())
        }
        AgentEvent::Final { .. } => writeln!(out),
    }
}
