//! `kestrel replay`: whether a transcript's turns reproduce (see `kestrel::replay`): each prompt
//! re-rendered, each greedy turn regenerated with the same cache reuse.

use std::path::Path;

use anyhow::{Context, bail};
use kestrel::agent::TurnRecord;
use kestrel::replay::{TurnCheck, replay};
use serde_json::{Value, json};

use crate::args::ReplayArgs;
use crate::loading::load_model;

/// The turn records of a `run` or `chat` transcript, and the model its start line names.
fn read_transcript(path: &Path) -> anyhow::Result<(Vec<TurnRecord>, Option<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut records, mut model) = (Vec::new(), None);
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{} line {}", path.display(), n + 1);
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        if value["kind"] == "start" {
            model = value["model"].as_str().map(str::to_owned);
        }
        if let Some(turns) = value.get("records") {
            let turns: Vec<TurnRecord> = serde_json::from_value(turns.clone())
                .with_context(|| format!("{}: the turn records do not read", at()))?;
            records.extend(turns);
        }
    }
    if records.is_empty() {
        bail!(
            "{} holds no turn records (a transcript is complete once its task or chat message ends)",
            path.display()
        );
    }
    Ok((records, model))
}

fn describe(check: &TurnCheck, tokenizer: Option<&kestrel_engine::Tokenizer>) -> String {
    let token = |id: u32| {
        let text = tokenizer
            .and_then(|t| t.decode(&[id]).ok())
            .unwrap_or_default();
        format!("{id} {text:?}")
    };
    let mut parts = Vec::new();
    match check.prompt_differs_at {
        None => parts.push("prompt re-renders to the recorded ids".to_string()),
        Some(at) => parts.push(format!("prompt differs from the recorded ids at {at}")),
    }
    let (then, now) = check.reused;
    parts.push(if then == now {
        format!("{now} cached prompt ids, as recorded")
    } else {
        format!("{now} cached prompt ids, {then} recorded")
    });
    parts.push(match (&check.divergence, check.greedy) {
        (_, false) => "sampled turn: tokens not checked".to_string(),
        (None, true) => "greedy tokens regenerate".to_string(),
        (Some(d), true) => format!(
            "diverges at generated token {}: recorded {}, the model prefers {} by a logit margin of {:.4}",
            d.position,
            token(d.recorded),
            token(d.preferred),
            d.margin
        ),
    });
    format!("turn {}: {}", check.turn, parts.join("; "))
}

/// Runs the command; the exit code is 1 when a turn does not reproduce.
pub fn run(args: &ReplayArgs) -> anyhow::Result<u8> {
    let (records, recorded_model) = read_transcript(&args.transcript)?;
    let mut model_args = args.model.clone();
    if model_args.model.is_none() {
        model_args.model = recorded_model;
    }
    let model = load_model(&model_args)?;
    let tokenizer = model.tokenizer().cloned();
    let checks = replay(model, &records)?;
    for check in &checks {
        if args.json {
            println!("{}", json!({"turn": check, "matches": check.matches()}));
        } else {
            println!("{}", describe(check, tokenizer.as_ref()));
        }
    }
    let failed = checks.iter().filter(|c| !c.matches()).count();
    if !args.json {
        println!(
            "{} of {} turns reproduce",
            checks.len() - failed,
            checks.len()
        );
    }
    Ok(u8::from(failed > 0))
}
