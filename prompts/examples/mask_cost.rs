//! What schema-constrained tool calls cost per token, against the decode step itself.
//!
//! `cargo run --release -p kestrel --example mask_cost -- MODEL [RUNS]`
//! runs RUNS (default 5) greedy turns whose answer must be a tool call (`tool_choice: required`)
//! and prints the median mask + grammar time per constrained token, the median decode time per
//! token, and their ratio.

use std::sync::Arc;

use kestrel_engine::{GenerateRequest, LoadOptions, Model, SamplingParams, Session};
use kestrel_prompts::constrain::{GrammarTokenizer, ToolCallHook, ToolChoice, ToolChoiceMode};
use kestrel_prompts::messages::ChatRequest;
use kestrel_prompts::template::ChatTemplate;
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: mask_cost MODEL [RUNS]"))?;
    let runs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let model = Arc::new(Model::load(path.as_ref(), &LoadOptions::default())?);
    let tokenizer = model.require_tokenizer()?;
    let tools = vec![
        json!({"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}}),
        json!({"type": "function", "function": {"name": "search_files", "description": "Search files for a pattern",
            "parameters": {"type": "object", "properties": {"pattern": {"type": "string"}, "max_results": {"type": "integer"}},
            "required": ["pattern"]}}}),
    ];
    let mut request = ChatRequest::from_json(
        r#"{"messages": [{"role": "user", "content": "What is the weather in Oslo, in celsius?"}]}"#,
    )?;
    request.tools = tools.clone();
    let template = match tokenizer.chat_template() {
        Some(t) => ChatTemplate::new(t)?,
        None => ChatTemplate::qwen3(),
    };
    let prompt = template.prompt(&request, tokenizer)?.ids;
    let grammar = GrammarTokenizer::new(tokenizer, model.config().vocab_size)?;
    let (mut mask_ms, mut decode_ms) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut hook = ToolCallHook::new(
            &grammar,
            &tools,
            &ToolChoice::Mode(ToolChoiceMode::Required),
            false,
            false,
        )?;
        let mut session = Session::new(model.clone());
        let req = GenerateRequest {
            prompt: prompt.clone(),
            max_tokens: 64,
            sampling: SamplingParams::greedy(),
            stop_ids: None,
        };
        let mut generation = session.generate(req, Some(&mut hook));
        let mut text = String::new();
        for t in generation.by_ref() {
            text.push_str(&t?.text);
        }
        let timings = generation.timings();
        drop(generation);
        let (steps, time) = hook.constraint_cost();
        if steps > 0 {
            mask_ms.push(time.as_secs_f64() * 1e3 / steps as f64);
        }
        decode_ms.push(1e3 / timings.decode_tokens_per_s());
        eprintln!("{text:?}");
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (m, d) = (median(&mut mask_ms), median(&mut decode_ms));
    println!(
        "{}",
        json!({"mask_ms_per_token": m, "decode_ms_per_token": d, "ratio": m / d, "runs": runs})
    );
    Ok(())
}
