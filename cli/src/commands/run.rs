//! `kestrel run`: one task, from the command line, to its answer.
//!
//! The terminal view streams thinking (dimmed when stdout is a terminal), tool calls, their results
//! and the answer; per-turn statistics go to stderr. `--json` prints the agent's events as JSON
//! Lines instead. `--transcript` writes everything needed to audit or replay the run.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;

use kestrel::agent::{Agent, AgentEvent};

use crate::args::RunArgs;
use crate::loading::load_model;
use crate::options::{config, options};
use crate::render::render;

/// Runs the command.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let options = options(&args.agent)?;
    let config = config(args.agent.config.as_ref())?;
    let model = load_model(&args.model)?;
    let runtime = crate::startup::runtime()?;
    let host = crate::startup::start_host(
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
