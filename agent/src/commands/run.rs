//! `kestrel run`: one task, from the command line, to its answer.
//!
//! The terminal view streams thinking (dimmed when stdout is a terminal), tool calls, their results
//! and the answer; per-turn statistics go to stderr. `--json` prints the agent's events as JSON
//! Lines instead. `--transcript` writes everything needed to audit or replay the run.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;

use crate::agent::{Agent, AgentEvent, AgentOptions, ApprovalPolicy};
use crate::cli::{AgentArgs, RunArgs};
use crate::constrain::{NamedFunction, ToolChoice, ToolChoiceMode};
use crate::loading::load_model;
use crate::mcp::McpConfig;
use crate::thinking::{ThinkingBudget, non_thinking_preset, thinking_preset};

pub(crate) fn config(path: Option<&PathBuf>) -> anyhow::Result<McpConfig> {
    match path {
        Some(p) => Ok(McpConfig::load(p)?),
        None => match McpConfig::default_path() {
            Ok(p) => Ok(McpConfig::load(&p)?),
            Err(_) => {
                eprintln!(
                    "note: no MCP configuration (--config FILE or ~/.config/kestrel/mcp.json): running without tools"
                );
                Ok(McpConfig::default())
            }
        },
    }
}

pub(crate) fn tool_choice(text: Option<&str>) -> ToolChoice {
    match text {
        None | Some("auto") => ToolChoice::Unset,
        Some("none") => ToolChoice::Mode(ToolChoiceMode::None),
        Some("required") => ToolChoice::Mode(ToolChoiceMode::Required),
        Some(name) => ToolChoice::Named {
            kind: "function".into(),
            function: NamedFunction { name: name.into() },
        },
    }
}

/// Agent options from the shared flags.
pub(crate) fn options(args: &AgentArgs) -> anyhow::Result<AgentOptions> {
    let thinking = match (args.think, args.no_think) {
        (true, true) => bail!("--think and --no-think contradict each other"),
        (true, false) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    };
    let mut sampling = if thinking == Some(false) {
        non_thinking_preset()
    } else {
        thinking_preset()
    };
    if let Some(t) = args.temperature {
        if !(t.is_finite() && t >= 0.0) {
            bail!("--temperature must be a number >= 0, got {t}");
        }
        sampling.temperature = t;
    }
    if let Some(seed) = args.seed {
        sampling.seed = Some(seed);
    }
    let max_wall = match args.max_time {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => bail!("--max-time must be a positive number of seconds, got {s}"),
    };
    if args.max_tokens == 0 {
        bail!("--max-tokens must be positive");
    }
    Ok(AgentOptions {
        max_rounds: args.max_rounds,
        max_total_tokens: args.max_tokens,
        max_turn_tokens: args.max_tokens.min(4096),
        max_wall,
        thinking,
        budget: ThinkingBudget {
            per_turn: args.thinking_budget,
            per_task: args.task_thinking_budget,
        },
        sampling,
        first_tool_choice: tool_choice(args.tool_choice.as_deref()),
        system: match args.system.as_deref() {
            None => AgentOptions::default().system,
            Some("") => None,
            Some(text) => Some(text.to_string()),
        },
        approval: ApprovalPolicy {
            allow: args.allow.clone(),
            deny: args.deny.clone(),
            ask: args.ask.clone(),
        },
        ..AgentOptions::default()
    })
}

/// Runs the command.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let options = options(&args.agent)?;
    let config = config(args.agent.config.as_ref())?;
    let model = load_model(&args.model)?;
    let runtime = super::runtime()?;
    let host = super::start_host(
        &runtime,
        &config,
        (&model, &options.approval, None),
        "interrupted",
    )?;
    for s in runtime.block_on(host.status()) {
        if let Some(e) = s.error {
            eprintln!("warning: MCP server `{}` is not available: {e}", s.name);
        }
    }

    let mut transcript = match &args.transcript {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create the transcript {}", path.display()))?,
        )),
        None => None,
    };
    if let Some(t) = transcript.as_mut() {
        let tools = runtime.block_on(host.tools());
        writeln!(
            t,
            "{}",
            json!({"kind": "start", "task": args.task, "model": args.model.model,
                   "tools": tools, "options": format!("{options:?}")})
        )?;
    }
    let mut agent = Agent::new(model, host.clone(), runtime.handle().clone(), options)?;
    let color = std::io::stdout().is_terminal() && !args.json;
    let json_out = args.json;
    let mut out = std::io::stdout().lock();
    let mut last_was_thinking = false;
    let mut write_error: Option<std::io::Error> = None;
    let mut on_event = |event: &AgentEvent| {
        if let Some(t) = transcript.as_mut()
            && let Err(e) = writeln!(t, "{}", json!({"kind": "event", "event": event}))
        {
            write_error.get_or_insert(e);
        }
        let result = if json_out {
            serde_json::to_string(event)
                .map_err(std::io::Error::other)
                .and_then(|line| writeln!(out, "{line}"))
        } else {
            render(&mut out, event, color, &mut last_was_thinking)
        };
        if let Err(e) = result.and_then(|()| out.flush()) {
            write_error.get_or_insert(e);
        }
    };
    let outcome = agent.run(&args.task, &mut on_event);
    drop(agent);
    if let Ok(host) = Arc::try_unwrap(host) {
        runtime.block_on(host.shutdown());
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            if json_out {
                println!("{}", json!({"event": "error", "message": e.to_string()}));
            }
            return Err(e.into());
        }
    };
    if let Some(mut t) = transcript {
        writeln!(
            t,
            "{}",
            json!({"kind": "end", "answer": outcome.answer, "messages": outcome.messages,
                   "turns": outcome.turns, "records": outcome.records, "limited_by": outcome.limited_by})
        )?;
        t.flush()?;
    }
    if let Some(e) = write_error {
        return Err(e).context("cannot write the output");
    }
    Ok(())
}

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
