//! `kestrel run`: one task, from the command line, to its answer.
//!
//! The terminal view streams thinking (dimmed when stdout is a terminal), tool calls, their results
//! and the answer; per-turn statistics go to stderr. `--json` prints the agent's events as JSON
//! Lines instead. `--transcript` writes everything needed to audit or replay the run.

use anyhow::Context;
use serde_json::json;

use kestrel::agent::{Agent, AgentError, AgentOptions};
use kestrel::mcp::ElicitationHandle;

use crate::args::RunArgs;
use crate::loading::start_engine;
use crate::options::{config, options};
use crate::render::EventSink;
use crate::startup::{EXIT_INTERRUPTED, HostSetup, Services};
use crate::transcript::Transcript;

/// Runs the command; the exit code is 130 when Ctrl-C cancelled the task.
pub fn run(args: &RunArgs) -> anyhow::Result<u8> {
    let options = options(&args.agent)?;
    let mut config = config(args.agent.config.as_ref())?;
    config.sandbox_servers |= args.agent.sandbox_servers;
    let transcript = Transcript::create(args.transcript.as_deref())?;
    let backend = start_engine(&args.model, &args.engine, 1)?;
    let services = Services::start(
        &config,
        HostSetup {
            sampling: Some((&backend, &options.approval, None)),
            elicitation: args.agent.elicit.map(ElicitationHandle::from),
            ..HostSetup::default()
        },
        "interrupted",
    )?;
    services.warn_unavailable();
    let result = run_task(&services, backend, args, options, transcript);
    services.shutdown();
    result
}

fn run_task(
    services: &Services,
    backend: std::sync::Arc<dyn kestrel::backend::Backend>,
    args: &RunArgs,
    options: AgentOptions,
    mut transcript: Option<Transcript>,
) -> anyhow::Result<u8> {
    if let Some(t) = transcript.as_mut() {
        let tools = services.runtime.block_on(services.host.tools());
        t.line(
            &json!({"kind": "start", "task": args.task, "model": args.model.model,
                       "tools": tools, "options": options}),
        )?;
    }
    let handle = services.runtime.handle().clone();
    let mut agent = Agent::with_backend(backend, services.host.clone(), handle, options)?;
    let json_out = args.json;
    let mut sink = EventSink::new(json_out, transcript.as_mut());
    let cancel = agent.canceller();
    let outcome = {
        let _interruptible = services.cancel_on_interrupt(&cancel);
        agent.run(&args.task, &mut |event| sink.show(event))
    };
    let written = sink.finish();
    let outcome = match outcome {
        Ok(o) => o,
        Err(AgentError::Cancelled) => {
            if let Some(t) = transcript.as_mut() {
                t.line(&json!({"kind": "end", "cancelled": true}))?;
            }
            if json_out {
                println!("{}", json!({"event": "cancelled"}));
            }
            eprintln!("cancelled");
            return Ok(EXIT_INTERRUPTED);
        }
        Err(e) => {
            // The completed turns' events are already in the transcript; say how it ended.
            if let Some(t) = transcript.as_mut() {
                t.line(&json!({"kind": "end", "error": e.to_string()}))?;
            }
            if json_out {
                println!("{}", json!({"event": "error", "message": e.to_string()}));
            }
            return Err(e.into());
        }
    };
    if let Some(t) = transcript.as_mut() {
        t.line(
            &json!({"kind": "end", "answer": outcome.answer, "messages": outcome.messages,
                       "turns": outcome.turns, "records": outcome.records,
                       "limited_by": outcome.limited_by}),
        )?;
    }
    written.context("cannot write the output")?;
    Ok(0)
}
