//! `kestrel chat`: an interactive session with the agent's tools, limits and approvals.
//!
//! Each line read from standard input is a user message; the conversation (tool calls and results
//! included) is kept, so each answer only prefills what is new. Lines starting with `/` are
//! commands (`/think`, `/no_think`, `/reset`, `/help`, `/exit`). A person is present, so `ask`
//! decisions (destructive tools, sampling requests) and servers' requests for input (a form, or
//! a page to open; see `chat_form`) are questions on stderr answered by the next input lines: `y`
//! or `yes` approves. Reading answers from the same input keeps scripted sessions
//! (a pipe) deterministic.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde_json::json;

use super::chat_form::TerminalForm;
use super::chat_mcp;
use crate::args::ChatArgs;
use crate::loading::start_engine;
use crate::options::{config, fixed_sampling, options};
use crate::render::EventSink;
use crate::startup::{HostSetup, Services};
use crate::transcript::Transcript;
use kestrel::agent::{Agent, AgentError, ApprovalRequest, Approver};
use kestrel::backend::Backend;
use kestrel::mcp::ElicitationHandle;
use kestrel::prompts::messages::{Message, Role};

const HELP: &str = "commands: /think (thinking on), /no_think (thinking off), /reset (forget the conversation), /tools (list tools), /prompts (list servers' prompts), /prompt SERVER NAME key=value... (add a server's prompt), /exit; @server:uri in a message attaches that resource";

/// Reads one line from standard input; `None` at the end of input.
fn read_line() -> std::io::Result<Option<String>> {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\n', '\r']).to_string()))
}

/// Asks on stderr; the answer is the next input line: yes, no, or always (for this tool, or
/// this server's sampling requests, until the chat ends).
fn terminal_approver() -> Approver {
    let always: Mutex<HashSet<String>> = Mutex::default();
    Arc::new(move |request: ApprovalRequest<'_>| {
        let key = match request {
            ApprovalRequest::Call { tool, .. } => format!("{}/{}", tool.server, tool.tool),
            ApprovalRequest::Sampling { server, .. } => format!("{server}/sampling"),
        };
        let mut always = always.lock().unwrap_or_else(|e| e.into_inner());
        if always.contains(&key) {
            return true;
        }
        const CHOICES: &str = "[y]es, [N]o, [a]lways";
        match request {
            ApprovalRequest::Call { tool, arguments } => {
                eprint!(
                    "approve {} ({}/{}) with {arguments}? {CHOICES} ",
                    tool.name, tool.server, tool.tool
                )
            }
            ApprovalRequest::Sampling { server, prompt } => eprint!(
                "server `{server}` asks the model to write a message for:\n{prompt}approve? {CHOICES} "
            ),
        }
        let _ = std::io::stderr().flush();
        let answer = read_line().ok().flatten().unwrap_or_default();
        match answer.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => true,
            "a" | "always" => {
                always.insert(key);
                true
            }
            _ => false,
        }
    })
}

/// Runs the command: until the end of input, `/exit`, or Ctrl-C at the prompt.
pub fn run(args: &ChatArgs) -> anyhow::Result<u8> {
    let options = options(&args.agent)?;
    let mut config = config(args.agent.config.as_ref())?;
    config.sandbox_servers |= args.agent.sandbox_servers;
    let transcript = Transcript::create(args.transcript.as_deref())?;
    let backend = start_engine(&args.model, &args.engine, 1)?;
    let approver = terminal_approver();
    let services = Services::start(
        &config,
        HostSetup {
            sampling: Some((&backend, &options.approval, Some(approver.clone()))),
            elicitation: Some(match args.agent.elicit {
                Some(policy) => policy.into(),
                None => ElicitationHandle(Arc::new(TerminalForm)),
            }),
            ..HostSetup::default()
        },
        "bye",
    )?;
    services.warn_unavailable();
    let result = converse(&services, backend, args, options, approver, transcript);
    services.shutdown();
    result.map(|()| 0)
}

fn converse(
    services: &Services,
    backend: Arc<dyn Backend>,
    args: &ChatArgs,
    mut options: kestrel::agent::AgentOptions,
    approver: Approver,
    mut transcript: Option<Transcript>,
) -> anyhow::Result<()> {
    let (runtime, host) = (&services.runtime, &services.host);
    let system = options.system.take();
    let mut agent = Agent::with_backend(backend, host.clone(), runtime.handle().clone(), options)?;
    agent.set_approver(approver);
    let cancel = agent.canceller();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("{HELP}");
    }
    let history_start = || -> Vec<Message> {
        system
            .iter()
            .map(|s| Message::text(Role::System, s))
            .collect()
    };
    let mut messages = history_start();
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = read_line().context("cannot read standard input")? else {
            break;
        };
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            "/think" | "/no_think" => {
                let on = line == "/think";
                let opts = agent.options_mut();
                opts.thinking = Some(on);
                opts.sampling = fixed_sampling(&args.agent, on);
                eprintln!("thinking {}", if on { "on" } else { "off" });
                continue;
            }
            "/reset" => {
                messages = history_start();
                eprintln!("conversation cleared");
                continue;
            }
            "/tools" => {
                for tool in runtime.block_on(host.tools()) {
                    eprintln!("{} ({}/{})", tool.name, tool.server, tool.tool);
                }
                continue;
            }
            "/prompts" => {
                chat_mcp::list_prompts(runtime, host);
                continue;
            }
            _ if line.starts_with('/') && !line.contains(' ') => {
                eprintln!("unknown command {line}; {HELP}");
                continue;
            }
            _ => {}
        }
        // What this message adds: a server's prompt, or the line with its attached resources.
        // Nothing is added when that fails; the line can be sent again.
        let added = match line.strip_prefix("/prompt ") {
            Some(rest) => chat_mcp::prompt_messages(runtime, host, rest),
            None => chat_mcp::attach_resources(runtime, host, line)
                .map(|text| vec![Message::text(Role::User, &text)]),
        };
        let added = match added {
            Ok(added) => added,
            Err(e) => {
                eprintln!("error: {e:#}");
                continue;
            }
        };
        let mut turn_messages = messages.clone();
        turn_messages.extend(added.iter().cloned());
        if let Some(t) = transcript.as_mut() {
            t.line(&json!({"kind": "user", "text": line, "messages": added}))?;
        }
        if turn_messages.last().is_none_or(|m| m.role != Role::User) {
            // A prompt that ends with the model's words: kept, nothing to answer yet.
            messages = turn_messages;
            continue;
        }
        let mut sink = EventSink::new(args.json, transcript.as_mut());
        let outcome = {
            let _interruptible = services.cancel_on_interrupt(&cancel);
            agent.run_messages(turn_messages, &mut |event| sink.show(event))
        };
        let written = sink.finish();
        match outcome {
            Ok(outcome) => {
                if let Some(t) = transcript.as_mut() {
                    t.line(&json!({"kind": "answer", "answer": outcome.answer,
                                   "turns": outcome.turns, "records": outcome.records,
                                   "limited_by": outcome.limited_by}))?;
                }
                messages = outcome.messages;
            }
            Err(AgentError::Cancelled) => {
                if let Some(t) = transcript.as_mut() {
                    t.line(&json!({"kind": "cancelled"}))?;
                }
                if args.json {
                    println!("{}", json!({"event": "cancelled"}));
                }
                eprintln!("cancelled (the message was not added to the conversation)");
            }
            // The conversation stays as it was before this message; nothing else is lost.
            Err(e) => {
                if args.json {
                    println!("{}", json!({"event": "error", "message": e.to_string()}));
                }
                eprintln!("error: {e} (the message was not added to the conversation)");
            }
        }
        written.context("cannot write the output")?;
    }
    Ok(())
}
