//! Flags to library options: what the shared agent flags mean, checked once, for every command
//! that runs tasks (`run`, `chat`, `batch`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use kestrel::agent::{AgentOptions, ApprovalPolicy};
use kestrel::mcp::McpConfig;
use kestrel::prompts::constrain::{NamedFunction, ToolChoice, ToolChoiceMode};
use kestrel::prompts::thinking::{ThinkingBudget, non_thinking_preset, thinking_preset};

use crate::args::AgentArgs;

/// The `mcpServers` file named by `--config`, else the user's default one, else none (with a note).
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

/// `--tool-choice` as the library's tool choice.
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
