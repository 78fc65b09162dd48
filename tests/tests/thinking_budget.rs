//! The thinking budget on a real (tiny, random) Qwen3 driven by the real Qwen3 tokenizer: the
//! random model never closes `</think>` by itself, so the budget decides where thinking ends.

use kestrel_tests::{assets, fixtures};
use std::sync::Arc;

use kestrel_engine::{GenerateRequest, LoadOptions, Model, SamplingParams, Session};
use kestrel_prompts::messages::ChatRequest;
use kestrel_prompts::parser::{OutputParser, ParseEvent, ParserConfig};
use kestrel_prompts::template::ChatTemplate;
use kestrel_prompts::thinking::{EARLY_STOP_TEXT, ThinkingBudget, ThinkingBudgetHook};

fn model() -> Arc<Model> {
    let options = LoadOptions {
        tokenizer: Some(assets().join("qwen3-tokenizer")),
        ..LoadOptions::default()
    };
    let dir = fixtures().join("models/qwen3-tiny-fullvocab");
    Arc::new(Model::load(&dir, &options).expect("tiny qwen3"))
}

fn request(thinking: Option<bool>) -> ChatRequest {
    let mut r =
        ChatRequest::from_json(r#"{"messages": [{"role": "user", "content": "Plan a trip."}]}"#)
            .expect("request");
    r.enable_thinking = thinking;
    r
}

/// Sampling from the whole distribution, so the random model's choices vary with the seed.
fn full_distribution(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

/// A thinking-mode prompt that already opened `<think>`, as Qwen3's thinking templates end: the
/// output starts inside the thinking.
fn thinking_prompt(tokenizer: &kestrel_engine::Tokenizer) -> Vec<u32> {
    let mut prompt = ChatTemplate::qwen3()
        .prompt(&request(None), tokenizer)
        .expect("prompt")
        .ids;
    prompt.extend(tokenizer.encode_raw("<think>\n").expect("think"));
    prompt
}

#[test]
fn budget_forces_the_early_stop_text_after_exactly_n_thinking_tokens() {
    let model = model();
    let tokenizer = model.require_tokenizer().expect("tokenizer");
    let template = ChatTemplate::qwen3();
    let answer_tokens = 6;
    for (budget, seed) in [(1usize, 1u64), (5, 2), (12, 3)] {
        let mut prompt = template
            .prompt(&request(None), tokenizer)
            .expect("prompt")
            .ids;
        // Open the thinking as Qwen3's thinking templates do; the output starts inside it.
        prompt.extend(tokenizer.encode_raw("<think>\n").expect("think"));
        let mut hook = ThinkingBudgetHook::new(tokenizer, Some(budget), true).expect("hook");
        let early_stop = hook.early_stop_ids().to_vec();
        let sampling = full_distribution(seed);
        let max_tokens = budget + early_stop.len() + answer_tokens;
        let mut session = Session::new(model.clone());
        let tokens: Vec<_> = session
            .generate(
                GenerateRequest {
                    prompt,
                    max_tokens,
                    sampling,
                    stop_ids: Some(vec![]),
                },
                Some(&mut hook),
            )
            .map(|t| t.expect("token"))
            .collect();
        assert_eq!(tokens.len(), max_tokens);
        assert!(
            tokens[..budget].iter().all(|t| !t.forced),
            "budget {budget}"
        );
        let forced: Vec<u32> = tokens[budget..budget + early_stop.len()]
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(forced, early_stop);
        assert!(
            tokens[budget..budget + early_stop.len()]
                .iter()
                .all(|t| t.forced)
        );
        assert!(
            tokens[budget + early_stop.len()..]
                .iter()
                .all(|t| !t.forced)
        );
        assert_eq!(hook.thinking_tokens(), budget);
        assert!(hook.stopped_early());

        // The parser sees the thinking end at the forced `</think>`, then the answer.
        let mut parser = OutputParser::new(ParserConfig {
            starts_in_thinking: true,
            ..Default::default()
        });
        let mut events = Vec::new();
        for t in &tokens {
            events.extend(parser.push(&t.text));
        }
        events.extend(parser.finish());
        let thinking: String = events
            .iter()
            .filter_map(|e| match e {
                ParseEvent::ThinkingDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            thinking.ends_with(EARLY_STOP_TEXT.split("</think>").next().expect("head")),
            "{thinking:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ParseEvent::TextDelta { text } if text.starts_with(".\n\n"))),
            "{events:?}"
        );
    }
}

#[test]
fn zero_budget_is_thinking_off() {
    let model = model();
    let tokenizer = model.require_tokenizer().expect("tokenizer");
    let budget = ThinkingBudget {
        per_turn: Some(0),
        per_task: None,
    };
    assert!(budget.disables_thinking(0));
    let off = ChatTemplate::qwen3()
        .prompt(&request(Some(false)), tokenizer)
        .expect("prompt");
    assert!(
        off.text
            .ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    );
    let mut hook = ThinkingBudgetHook::new(tokenizer, budget.turn_limit(0), false).expect("hook");
    let sampling = full_distribution(9);
    let mut session = Session::new(model.clone());
    let tokens: Vec<_> = session
        .generate(
            GenerateRequest {
                prompt: off.ids,
                max_tokens: 8,
                sampling,
                stop_ids: Some(vec![]),
            },
            Some(&mut hook),
        )
        .map(|t| t.expect("token"))
        .collect();
    assert!(tokens.iter().all(|t| !t.forced));
    assert_eq!(hook.thinking_tokens(), 0);
}

#[test]
fn task_budget_spans_turns() {
    let model = model();
    let tokenizer = model.require_tokenizer().expect("tokenizer");
    let budget = ThinkingBudget {
        per_turn: Some(4),
        per_task: Some(6),
    };
    let mut used = 0;
    let mut limits = Vec::new();
    for seed in [1u64, 2, 3] {
        let limit = budget.turn_limit(used);
        limits.push(limit);
        let prompt = thinking_prompt(tokenizer);
        let mut hook = ThinkingBudgetHook::new(tokenizer, limit, true).expect("hook");
        let sampling = full_distribution(seed);
        let mut session = Session::new(model.clone());
        for t in session.generate(
            GenerateRequest {
                prompt,
                max_tokens: 40,
                sampling,
                stop_ids: Some(vec![]),
            },
            Some(&mut hook),
        ) {
            t.expect("token");
        }
        used += hook.thinking_tokens();
    }
    assert_eq!(limits, vec![Some(4), Some(2), Some(0)]);
    assert_eq!(used, 6);
}
