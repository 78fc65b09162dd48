//! Answers held to a requested format on a real (tiny, random) Qwen3 with the real tokenizer:
//! a random model writes noise, so every valid answer below is the constraint's doing. Every seed
//! yields JSON that validates against the schema and ends the turn by itself; thinking stays free
//! before the answer; a tool call may take the answer's place only when tools may be called.

use kestrel_tests::{assets, fixtures};
use std::sync::Arc;

use kestrel_engine::{GenerateRequest, LoadOptions, Model, SamplingParams, Session, StepHook};
use kestrel_prompts::answer_format::{AnswerFormat, AnswerFormatHook};
use kestrel_prompts::constrain::GrammarTokenizer;
use kestrel_prompts::messages::ChatRequest;
use kestrel_prompts::template::ChatTemplate;
use serde_json::{Value, json};

struct Setup {
    model: Arc<Model>,
    grammar: GrammarTokenizer,
    prompt: Vec<u32>,
}

fn setup() -> Setup {
    let options = LoadOptions {
        tokenizer: Some(assets().join("qwen3-tokenizer")),
        ..LoadOptions::default()
    };
    let dir = fixtures().join("models/qwen3-tiny-fullvocab");
    let model = Arc::new(Model::load(&dir, &options).expect("tiny qwen3"));
    let tokenizer = model.require_tokenizer().expect("tokenizer");
    let grammar =
        GrammarTokenizer::new(tokenizer, model.config().vocab_size).expect("grammar tokenizer");
    let mut request =
        ChatRequest::from_json(r#"{"messages": [{"role": "user", "content": "Plan a trip."}]}"#)
            .expect("request");
    request.enable_thinking = Some(false);
    let prompt = ChatTemplate::qwen3()
        .prompt(&request, tokenizer)
        .expect("prompt")
        .ids;
    Setup {
        model,
        grammar,
        prompt,
    }
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "enum": ["Paris", "Oslo", "Zürich"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "note": {"type": "string", "maxLength": 8},
            "ok": {"type": "boolean"}
        },
        "required": ["city", "days", "note", "ok"],
        "additionalProperties": false
    })
}

const MAX_TOKENS: usize = 200;

/// One answer under `format`: its text and how many tokens it took.
fn answer(s: &Setup, format: &AnswerFormat, seed: u64) -> (String, usize) {
    let mut hook = AnswerFormatHook::new(&s.grammar, format, false, false, false).expect("hook");
    let errors = hook.errors();
    let sampling = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let mut session = Session::new(s.model.clone());
    let request = GenerateRequest {
        prompt: s.prompt.clone(),
        max_tokens: MAX_TOKENS,
        sampling,
        stop_ids: None,
    };
    let mut text = String::new();
    let mut count = 0;
    for token in session.generate(request, Some(&mut hook)) {
        text.push_str(&token.expect("token").text);
        count += 1;
    }
    let errors = errors.take();
    assert!(errors.is_empty(), "seed {seed}: {errors:?}");
    (text, count)
}

#[test]
fn every_seed_answers_with_json_that_matches_the_schema_and_stops() {
    let s = setup();
    let validator = jsonschema::validator_for(&schema()).expect("schema");
    for seed in 0..8 {
        let (text, count) = answer(&s, &AnswerFormat::JsonSchema(schema()), seed);
        assert!(count < MAX_TOKENS, "seed {seed}: ran to the limit: {text}");
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("seed {seed}: not JSON ({e}): {text:?}"));
        assert!(validator.is_valid(&value), "seed {seed}: {value}");
    }
    // Any object: a random model may fill a free string until the limit, so a cut-off answer
    // must still be a prefix of JSON (it fails only by ending early).
    for seed in 0..3 {
        let (text, count) = answer(&s, &AnswerFormat::JsonObject, seed);
        assert!(text.trim_start().starts_with('{'), "seed {seed}: {text:?}");
        match serde_json::from_str::<Value>(&text) {
            Ok(value) => assert!(value.is_object(), "seed {seed}: {value}"),
            Err(e) => assert!(
                e.is_eof() && count == MAX_TOKENS,
                "seed {seed}: not JSON ({e}): {text:?}"
            ),
        }
    }
}

#[test]
fn thinking_is_free_and_a_call_may_replace_the_answer_only_when_tools_may_be_called() {
    let s = setup();
    let tokenizer = s.model.require_tokenizer().expect("tokenizer");
    let id = |t: &str| tokenizer.token_id(t).expect(t) as usize;
    let vocab = s.model.config().vocab_size;
    let format = AnswerFormat::JsonSchema(schema());
    let allowed = |hook: &mut AnswerFormatHook, token: &str| {
        let mut logits = vec![0.0f32; vocab];
        hook.before_step(&[], &mut logits);
        logits[id(token)].is_finite()
    };

    let mut thinking =
        AnswerFormatHook::new(&s.grammar, &format, false, true, false).expect("hook");
    assert!(
        allowed(&mut thinking, "<think>"),
        "a thinking turn may think"
    );
    thinking.on_token(id("<think>") as u32, false);
    let mut logits = vec![0.0f32; vocab];
    thinking.before_step(&[], &mut logits);
    assert!(
        logits.iter().filter(|l| l.is_finite()).count() > 1000,
        "thinking is free"
    );
    thinking.on_token(id("</think>") as u32, false);
    assert!(allowed(&mut thinking, "{"), "after thinking, the answer");
    assert!(!allowed(&mut thinking, "<think>"), "no second thought");
    assert!(!allowed(&mut thinking, "<tool_call>"), "no tools offered");
    assert!(!allowed(&mut thinking, "Sure"), "prose is not JSON");

    let mut quiet = AnswerFormatHook::new(&s.grammar, &format, false, false, false).expect("hook");
    assert!(
        !allowed(&mut quiet, "<think>"),
        "thinking off: the answer at once"
    );

    let mut tools = AnswerFormatHook::new(&s.grammar, &format, false, false, true).expect("hook");
    assert!(allowed(&mut tools, "<tool_call>"), "a call may come first");
    tools.on_token(id("<tool_call>") as u32, false);
    assert!(
        allowed(&mut tools, "Sure"),
        "the call's own constraint takes over"
    );
}

#[test]
fn a_schema_llguidance_cannot_take_is_refused_before_generating() {
    let s = setup();
    for bad in [
        AnswerFormat::JsonSchema(json!("object")),
        AnswerFormat::JsonSchema(
            json!({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}),
        ),
    ] {
        let error = AnswerFormatHook::new(&s.grammar, &bad, false, false, false)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} was accepted"));
        assert!(error.to_string().contains("schema"), "{error}");
    }
}
