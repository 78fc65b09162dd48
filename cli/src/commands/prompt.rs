//! `kestrel prompt render`: the exact prompt text (or token ids) for a chat request.

use std::io::Read;

use anyhow::Context;
use kestrel_engine::Tokenizer;

use crate::args::PromptRenderArgs;
use kestrel::prompts::messages::ChatRequest;
use kestrel::prompts::template::ChatTemplate;

/// Runs the command.
pub fn render(args: &PromptRenderArgs) -> anyhow::Result<()> {
    let text = if args.request.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the request from stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.request)
            .with_context(|| format!("cannot read {}", args.request.display()))?
    };
    let source = if args.request.as_os_str() == "-" {
        "stdin".to_string()
    } else {
        args.request.display().to_string()
    };
    let request = ChatRequest::from_json(&text)
        .with_context(|| format!("invalid chat request in {source}"))?;
    let tokenizer = Tokenizer::load(&args.model)?;
    let template = match tokenizer.chat_template() {
        Some(t) => ChatTemplate::new(t)?,
        None => ChatTemplate::qwen3(),
    };
    let prompt = template.prompt(&request, &tokenizer)?;
    if args.ids {
        println!("{}", serde_json::to_string(&prompt.ids)?);
    } else {
        print!("{}", prompt.text);
    }
    Ok(())
}
