//! The `kestrel` command line as clap types: what each command accepts, nothing of what it does
//! (`options` turns these into library options, `commands` runs them).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kestrel::mcp::ElicitPolicy;

/// Run Qwen3 agents that act through MCP tools.
#[derive(Debug, Parser)]
#[command(name = "kestrel", version, about)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
    /// How log lines on stderr are written: `text` for people, `json` (one object per line, with
    /// the spans a line belongs to, such as a server request and its id) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Export traces (a server request, its turns, generations and tool calls; an agent's task,
    /// turns and tool calls) to this OpenTelemetry collector over OTLP/HTTP, e.g.
    /// http://localhost:4318.
    #[arg(long, global = true, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one task: the model thinks, calls MCP tools, reads their results and answers.
    Run(RunArgs),
    /// An interactive session: each input line is a message; /think, /no_think, /reset, /exit.
    Chat(ChatArgs),
    /// Run many tasks from a JSON Lines file, resumably, sharing the prompt prefix's KV cache.
    Batch(BatchArgs),
    /// Raw completion: tokenize the prompt as given (special-token text included) and continue it.
    Generate(GenerateArgs),
    /// Measure prefill and decode speed (greedy, random prompt tokens).
    Bench(BenchArgs),
    /// Chat prompts: render a request with the model's template.
    #[command(subcommand)]
    Prompt(PromptCommand),
    /// MCP servers: list their tools, call one.
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// Kestrel's agent as an MCP server, for other MCP hosts.
    #[command(subcommand)]
    Mcp(McpCommand),
    /// Memory a model needs at a context and batch (weights, KV cache, scratch) against what this
    /// machine has, from the config or the GGUF header alone.
    Plan(PlanArgs),
    /// Check that a transcript reproduces: each turn's prompt re-renders to the recorded ids and,
    /// with the same model, greedy turns regenerate them (exit code 1 when a turn does not).
    Replay(ReplayArgs),
    /// Serve the model over HTTP with OpenAI's Chat Completions API (many clients at once).
    Serve(ServeArgs),
}

/// `kestrel plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A model directory, a .gguf file, or a Hugging Face repo id (only its config.json is
    /// fetched; a GGUF repo's file must be cached or local).
    #[arg(long, value_name = "PATH|REPO")]
    pub model: Option<String>,
    /// Sequences held at once.
    #[arg(long, default_value_t = 1, value_name = "B")]
    pub batch: usize,
    /// auto, cpu, cuda, cuda:N or metal: whose memory to check against.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Weight dtype for safetensors models (default: f32 on CPU, bf16 on GPUs).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Context flags.
    #[command(flatten)]
    pub context: ContextArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `kestrel replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Model selection (default: the model the transcript names).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print one JSON object per turn.
    #[arg(long)]
    pub json: bool,
    /// A transcript written by `run --transcript` or `chat --transcript`.
    pub transcript: PathBuf,
}

/// `kestrel run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Model selection.
    #[command(flatten)]
    pub model: ModelArgs,
    /// A remote engine instead of the embedded one.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Agent settings.
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Print JSON Lines events instead of the terminal view.
    #[arg(long)]
    pub json: bool,
    /// Write a transcript (JSON Lines: events, tool calls and results, prompt and output token
    /// ids per turn, timings).
    #[arg(long, value_name = "FILE")]
    pub transcript: Option<PathBuf>,
    /// The task.
    pub task: String,
}

/// `kestrel chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Model selection.
    #[command(flatten)]
    pub model: ModelArgs,
    /// A remote engine instead of the embedded one.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Agent settings (per message).
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Print JSON Lines events instead of the terminal view.
    #[arg(long)]
    pub json: bool,
    /// Write a transcript (JSON Lines: each message, its events, tokens and timings).
    #[arg(long, value_name = "FILE")]
    pub transcript: Option<PathBuf>,
}

/// `kestrel batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Model selection.
    #[command(flatten)]
    pub model: ModelArgs,
    /// A remote engine instead of the embedded one.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Agent settings (each task may override some, see the README).
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Tasks, one JSON object per line: {"task": "...", "id": ..., and optional overrides}.
    pub tasks: PathBuf,
    /// Results, one JSON object per line; tasks already in it are skipped (default: TASKS with
    /// .results.jsonl).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Tasks run at once, each with its own KV cache.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub concurrency: usize,
}

/// Settings shared by `run` and `batch`.
#[derive(Debug, Args, Clone)]
pub struct AgentArgs {
    /// The `mcpServers` file (default: $KESTREL_CONFIG, else ~/.config/kestrel/mcp.json or
    /// mcp.toml; without one tasks run without tools).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Confine every stdio MCP server without a `sandbox` setting of its own: it reads only
    /// system directories, its installation and the roots, writes only under the roots, and has
    /// no network (also `"sandbox_servers": true` in the file).
    #[arg(long)]
    pub sandbox_servers: bool,
    /// Turn Qwen3's thinking on (the default for Qwen3; `/think` and `/no_think` in a message
    /// switch it as Qwen documents).
    #[arg(long)]
    pub think: bool,
    /// Turn Qwen3's thinking off (the soft switches are then ignored).
    #[arg(long)]
    pub no_think: bool,
    /// Most thinking tokens per turn (Qwen's early-stop text is inserted at the limit).
    #[arg(long, value_name = "N")]
    pub thinking_budget: Option<usize>,
    /// Most thinking tokens over the whole task.
    #[arg(long, value_name = "N")]
    pub task_thinking_budget: Option<usize>,
    /// Most turns that call tools before the model must answer.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_rounds: usize,
    /// Most generated tokens over the whole task.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub max_tokens: usize,
    /// Most generated tokens in one turn (default: --max-tokens); thinking is closed early
    /// enough to leave room for the answer.
    #[arg(long, value_name = "N")]
    pub max_turn_tokens: Option<usize>,
    /// Most seconds for a task: the turn running then is cut, and the model gets a tenth of it
    /// (5 to 60 s) more to answer without tools.
    #[arg(long, value_name = "SECS")]
    pub max_time: Option<f64>,
    /// tool_choice for the first turn: auto, required, none, or a tool name.
    #[arg(long, value_name = "CHOICE")]
    pub tool_choice: Option<String>,
    /// Apply --tool-choice to every turn, not only the first (with `required`, the task then
    /// ends when --max-rounds is reached).
    #[arg(long)]
    pub tool_choice_every_turn: bool,
    /// Allow a tool (name, server/tool or server/*) that would otherwise be refused or asked
    /// about; SERVER/sampling allows a server's requests to sample the model.
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,
    /// Refuse a tool (name, server/tool or server/*).
    #[arg(long, value_name = "RULE")]
    pub deny: Vec<String>,
    /// How servers' requests for the user's input (MCP elicitation) are answered: `decline`
    /// (the default), or `defaults` (accept a form with its schema's defaults; decline one whose
    /// required fields have none, and any page to open). `chat` asks on the terminal unless this
    /// is given.
    #[arg(long, value_name = "POLICY")]
    pub elicit: Option<ElicitPolicy>,
    /// Ask before a tool runs (name, server/tool or server/*); in `chat` the next input line
    /// answers, elsewhere nobody can, so it is refused.
    #[arg(long, value_name = "RULE")]
    pub ask: Vec<String>,
    /// The system prompt (default: none of Kestrel's; the chat template's own default applies).
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature (default: Qwen's preset for the thinking mode).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Random seed.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// `kestrel tools ...`.
#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// Start every configured server and show its status and tools (exit code 2 when an enabled
    /// server fails to start).
    List(ToolsListArgs),
    /// Call one tool and print its result (non-zero exit on a tool error or a timeout).
    Call(ToolsCallArgs),
}

/// `kestrel mcp ...`.
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Offer the agent to other MCP hosts as one tool, `run_task`, over stdio (or Streamable
    /// HTTP with --port): a task runs with this command's model, MCP servers and agent settings,
    /// and its answer comes back with the tool calls it made; a tool needing approval is asked of
    /// the calling host (elicitation), or refused if it cannot ask.
    Serve(Box<McpServeArgs>),
    /// Log in to an HTTP MCP server that requires OAuth: prints the page to open, takes the
    /// browser's redirect on a loopback port (or the address it ends on, pasted), and keeps the
    /// tokens (file mode 0600) in ~/.config/kestrel/oauth/ for run, chat, batch and serve.
    Login(McpLoginArgs),
    /// Forget a server's OAuth tokens.
    Logout(McpLoginArgs),
}

/// `kestrel mcp login` and `logout`.
#[derive(Debug, Args)]
pub struct McpLoginArgs {
    /// The server's name in the configuration.
    pub server: String,
    /// The `mcpServers` file (default: as for run).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `kestrel mcp serve`.
#[derive(Debug, Args)]
pub struct McpServeArgs {
    /// Model selection.
    #[command(flatten)]
    pub model: ModelArgs,
    /// A remote engine instead of the embedded one.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Agent settings (a call may lower the thinking budget and rounds).
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Serve MCP's Streamable HTTP at http://HOST:PORT/mcp instead of stdio (0: any free port,
    /// printed on stderr).
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to listen on with --port.
    #[arg(long, default_value = "127.0.0.1", requires = "port")]
    pub host: String,
    /// Tasks run at once; more wait their turn.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
}

/// `kestrel tools list`.
#[derive(Debug, Args)]
pub struct ToolsListArgs {
    /// The `mcpServers` file, JSON or TOML (default: $KESTREL_CONFIG, else mcp.json or mcp.toml
    /// in the user's config directory, ~/.config/kestrel/ on Linux).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Confine every stdio MCP server without a `sandbox` setting of its own: it reads only
    /// system directories, its installation and the roots, writes only under the roots, and has
    /// no network (also `"sandbox_servers": true` in the file).
    #[arg(long)]
    pub sandbox_servers: bool,
    /// Print JSON: every server's status and tools, and the names offered to the model.
    #[arg(long)]
    pub json: bool,
}

/// `kestrel tools call`.
#[derive(Debug, Args)]
pub struct ToolsCallArgs {
    /// The server's name in the configuration.
    pub server: String,
    /// The tool's name on that server.
    pub tool: String,
    /// Arguments as a JSON object.
    #[arg(long, value_name = "JSON")]
    pub args: Option<String>,
    /// Seconds to wait for the result (default: the server's call_timeout_secs, else 60).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// The `mcpServers` file (see `tools list`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Confine every stdio MCP server without a `sandbox` setting of its own: it reads only
    /// system directories, its installation and the roots, writes only under the roots, and has
    /// no network (also `"sandbox_servers": true` in the file).
    #[arg(long)]
    pub sandbox_servers: bool,
    /// Print the result as the server sent it (JSON) instead of as text.
    #[arg(long)]
    pub json: bool,
}

/// `kestrel prompt ...`.
#[derive(Debug, Subcommand)]
pub enum PromptCommand {
    /// Print the exact prompt text for a chat request (OpenAI format), or its token ids.
    Render(PromptRenderArgs),
}

/// `kestrel prompt render`.
#[derive(Debug, Args)]
pub struct PromptRenderArgs {
    /// A model directory, a directory with only tokenizer files, or a .gguf file.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// The request as JSON: a file, or - for standard input.
    #[arg(long, value_name = "FILE")]
    pub request: PathBuf,
    /// Print a JSON array of token ids instead of the text.
    #[arg(long)]
    pub ids: bool,
}

/// Flags shared by every command that loads a model.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// A model directory (config.json + safetensors), a .gguf file, or a Hugging Face repo id
    /// (owner/name, owner/name/FILE.gguf, owner/name:QUANT) taken from the HF cache or downloaded
    /// into it (default: one that fits the machine, see the README).
    #[arg(long, value_name = "PATH|REPO")]
    pub model: Option<String>,
    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Weight/activation dtype for safetensors models: f32, bf16 or f16 (default: f32 on CPU,
    /// bf16 on GPUs).
    #[arg(long)]
    pub dtype: Option<String>,
    /// A tokenizer.json (or its directory) to use instead of the model's own.
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// CPU threads (default: the number of physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Which code runs the heavy operations on a CPU: Kestrel's kernels, or candle's ops alone
    /// (the code a GPU runs; to compare the two).
    #[arg(long, value_enum, default_value_t = CpuOpsArg::Kestrel)]
    pub cpu_ops: CpuOpsArg,
    /// Context flags.
    #[command(flatten)]
    pub context: ContextArgs,
}

/// A serving engine to generate with instead of the embedded one.
#[derive(Debug, Args, Clone, Default)]
pub struct EngineArgs {
    /// Generate on this engine, at its OpenAI-compatible base URL (http://HOST:PORT/v1).
    /// --model gives the tokenizer (a model directory, a GGUF or a tokenizer.json; its weights
    /// are not loaded).
    #[arg(long, value_name = "URL")]
    pub engine: Option<String>,
    /// How to drive --engine: `token` sends Kestrel's prompt ids (llama-server, vLLM), `chat` sends
    /// messages to its Chat Completions endpoint (any server), `auto` takes token mode where
    /// the engine supports it and says so when it falls back to chat mode.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value_t = EngineMode::Auto,
        requires = "engine"
    )]
    pub engine_mode: EngineMode,
    /// Bearer token for --engine.
    #[arg(
        long,
        env = "KESTREL_ENGINE_KEY",
        hide_env_values = true,
        requires = "engine"
    )]
    pub engine_key: Option<String>,
    /// The model to ask --engine for, when it serves several.
    #[arg(long, value_name = "NAME", requires = "engine")]
    pub engine_model: Option<String>,
    /// Most seconds --engine may stay silent during a generation before it is an error.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 600.0,
        requires = "engine"
    )]
    pub engine_timeout: f64,
}

/// `--engine-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum EngineMode {
    /// Token mode where the engine supports it, else chat mode.
    #[default]
    Auto,
    /// Prompt ids to the engine's completion endpoint.
    Token,
    /// Messages to the engine's Chat Completions endpoint.
    Chat,
}

/// How long a sequence may grow, and RoPE scaling to get there.
#[derive(Debug, Args, Clone, Default)]
pub struct ContextArgs {
    /// Positions per sequence (default: the model's window, capped to what memory holds; a size
    /// that cannot fit is refused with the arithmetic, see `kestrel plan`).
    #[arg(long, value_name = "N")]
    pub ctx_size: Option<usize>,
    /// The KV cache's element type: f32, f16, bf16 or q8_0 (default: f16 on a CPU, bf16 on a
    /// GPU; q8_0 only on the CPU with --cpu-ops kestrel).
    #[arg(long, value_name = "T")]
    pub kv_type: Option<String>,
    /// Switch on RoPE scaling the model's config lacks: `yarn` (Qwen's recipe for 131k
    /// contexts: --rope-scaling yarn --rope-factor 4 --rope-original-ctx 32768).
    #[arg(long, value_enum, value_name = "TYPE")]
    pub rope_scaling: Option<RopeScalingArg>,
    /// The YaRN factor (with --rope-scaling yarn).
    #[arg(long, value_name = "F", requires = "rope_scaling")]
    pub rope_factor: Option<f64>,
    /// The context the model was trained with (with --rope-scaling yarn; default: the model's
    /// window).
    #[arg(long, value_name = "N", requires = "rope_scaling")]
    pub rope_original_ctx: Option<usize>,
}

/// `--rope-scaling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RopeScalingArg {
    /// YaRN, as transformers and llama.cpp implement it.
    Yarn,
}

/// `--cpu-ops`: see [`kestrel_engine::CpuOps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuOpsArg {
    /// Kestrel's quantized matmul kernels, attention and fused paths where they apply.
    Kestrel,
    /// candle's ops alone.
    Candle,
}

impl From<CpuOpsArg> for kestrel_engine::CpuOps {
    fn from(arg: CpuOpsArg) -> Self {
        match arg {
            CpuOpsArg::Kestrel => Self::Kestrel,
            CpuOpsArg::Candle => Self::Candle,
        }
    }
}

/// `kestrel generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model selection.
    #[command(flatten)]
    pub model: ModelArgs,
    /// A remote engine instead of the embedded one.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The prompt, tokenized as given.
    #[arg(
        long,
        required_unless_present = "prompt_ids",
        conflicts_with = "prompt_ids"
    )]
    pub prompt: Option<String>,
    /// The prompt as token ids, comma-separated (no tokenizer needed).
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Also write the logits after the prompt's last position to this file (little-endian f32,
    /// one per vocabulary entry), to compare devices and dtypes.
    #[arg(long, value_name = "FILE")]
    pub logits: Option<std::path::PathBuf>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy (default: the model's generation_config.json).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Top-k filter (0: off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Top-p (nucleus) filter.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Min-p filter.
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Presence penalty.
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    /// Frequency penalty (subtracted once per earlier occurrence of a token).
    #[arg(long)]
    pub frequency_penalty: Option<f32>,
    /// Repetition penalty.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Random seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// `kestrel serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model selection.
    #[command(flatten)]
    pub model: ModelArgs,
    /// A remote engine instead of the embedded one.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Address to listen on (loopback by default: put a proxy with TLS in front to expose it).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every request (without it, any key is accepted).
    #[arg(long, env = "KESTREL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests decoding together; more wait their turn.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
    /// Requests that may wait for a sequence beyond those; more are answered 429 with
    /// `Retry-After`.
    #[arg(long, default_value_t = 64)]
    pub queue: u16,
    /// An `mcpServers` file: its servers start once and requests may run their tools on the
    /// server (Responses `{"type": "mcp", "server_label": NAME}` tools; the same entry in Chat
    /// Completions' `tools`). Without it the server only runs the model.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Confine every stdio MCP server without a `sandbox` setting of its own (see `run`).
    #[arg(long, requires = "config")]
    pub sandbox_servers: bool,
}

/// `kestrel bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model selection.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length for the prefill run.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 1)]
    pub reps: usize,
    /// Sequences run together: each gets its own prompt, prefilled in shared passes of 512
    /// rows, then all decode in one forward pass per step; aggregate tok/s are reported (what
    /// llama-batched-bench measures).
    #[arg(long, default_value_t = 1, value_name = "B")]
    pub batch: usize,
    /// A Hugging Face config.json: benchmark random weights of its shapes, made on the device,
    /// instead of a model file.
    #[arg(long, value_name = "CONFIG", conflicts_with = "model")]
    pub synthetic: Option<PathBuf>,
    /// Quantize the synthetic model's matrices: q4_0, q5_0, q8_0, q2_k ... q6_k.
    #[arg(long, value_name = "TYPE", requires = "synthetic")]
    pub quant: Option<String>,
    /// Also measure the device's copy bandwidth and matmul throughput in this run and report
    /// decode's share of the bandwidth bound and prefill's share of the matmul peak.
    #[arg(long)]
    pub roofline: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}
