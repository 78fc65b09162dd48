//! Flags to library options: what the shared agent flags mean, checked once, for every command
//! that runs tasks (`run`, `chat`, `batch`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use kestrel::agent::{AgentOptions, ApprovalPolicy};
use kestrel::mcp::McpConfig;
use kestrel::prompts::constrain::{NamedFunction, ToolChoice, ToolChoiceMode};
use kestrel::prompts::thinking::{ThinkingBudget, preset};
use kestrel_engine::SamplingParams;

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

/// `--temperature` fixes the sampling: Qwen's preset for the mode with that temperature. Without
/// it each turn takes the preset of its own mode.
pub(crate) fn fixed_sampling(args: &AgentArgs, thinking: bool) -> Option<SamplingParams> {
    args.temperature.map(|temperature| SamplingParams {
        temperature,
        ..preset(thinking, args.seed)
    })
}

/// Agent options from the shared flags.
pub(crate) fn options(args: &AgentArgs) -> anyhow::Result<AgentOptions> {
    let thinking = match (args.think, args.no_think) {
        (true, true) => bail!("--think and --no-think contradict each other"),
        (true, false) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    };
    if let Some(t) = args.temperature
        && !(t.is_finite() && t >= 0.0)
    {
        bail!("--temperature must be a number >= 0, got {t}");
    }
    let max_wall = match args.max_time {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => bail!("--max-time must be a positive number of seconds, got {s}"),
    };
    if args.max_tokens == 0 {
        bail!("--max-tokens must be positive");
    }
    if args.max_turn_tokens == Some(0) {
        bail!("--max-turn-tokens must be positive");
    }
    let first_tool_choice = tool_choice(args.tool_choice.as_deref());
    if args.tool_choice_every_turn && args.tool_choice.is_none() {
        bail!("--tool-choice-every-turn needs --tool-choice");
    }
    Ok(AgentOptions {
        max_rounds: args.max_rounds,
        max_total_tokens: args.max_tokens,
        max_turn_tokens: args.max_turn_tokens.unwrap_or(args.max_tokens),
        max_wall,
        thinking,
        budget: ThinkingBudget {
            per_turn: args.thinking_budget,
            per_task: args.task_thinking_budget,
        },
        sampling: fixed_sampling(args, thinking != Some(false)),
        seed: args.seed,
        later_tool_choice: if args.tool_choice_every_turn {
            first_tool_choice.clone()
        } else {
            ToolChoice::Unset
        },
        first_tool_choice,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn agent_options(flags: &[&str]) -> anyhow::Result<AgentOptions> {
        let argv = [&["kestrel", "run"][..], flags, &["task"]].concat();
        let Command::Run(run) = Cli::try_parse_from(argv)?.command else {
            unreachable!("parsed as run")
        };
        options(&run.agent)
    }

    #[test]
    fn tool_choice_applies_to_the_first_turn_or_to_every_turn() {
        let required = ToolChoice::Mode(ToolChoiceMode::Required);
        let first = agent_options(&["--tool-choice", "required"]).expect("options");
        assert_eq!(
            (first.first_tool_choice, first.later_tool_choice),
            (required.clone(), ToolChoice::Unset)
        );
        let every = agent_options(&["--tool-choice", "required", "--tool-choice-every-turn"])
            .expect("options");
        assert_eq!(
            (every.first_tool_choice, every.later_tool_choice),
            (required.clone(), required)
        );
        let alone = agent_options(&["--tool-choice-every-turn"]).expect_err("needs a choice");
        assert!(alone.to_string().contains("--tool-choice"), "{alone}");
    }

    #[test]
    fn turn_tokens_default_to_the_task_budget_and_sampling_to_the_presets() {
        let default = agent_options(&["--max-tokens", "3000"]).expect("options");
        assert_eq!(default.max_turn_tokens, 3000, "no hidden per-turn cap");
        assert_eq!(default.sampling, None, "Qwen's preset per turn");
        let set =
            agent_options(&["--max-turn-tokens", "500", "--temperature", "0.2"]).expect("options");
        assert_eq!(set.max_turn_tokens, 500);
        assert_eq!(
            set.sampling.map(|s| (s.temperature, s.top_p)),
            Some((0.2, 0.95))
        );
        assert!(agent_options(&["--max-turn-tokens", "0"]).is_err());
    }
}
