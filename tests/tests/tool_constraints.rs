//! Schema-constrained tool calls on a real (tiny, random) Qwen3 with the real tokenizer: with
//! `required` every seed yields calls that parse and validate against the tool's schema; with
//! `none` no call ever starts; a named choice calls only that tool. The same holds for calls in
//! Qwen3-Coder's XML form, prompted with its template.

use kestrel_tests::{assets, fixtures};
use std::sync::Arc;

use kestrel_engine::{
    GenerateRequest, LoadOptions, Model, SamplingParams, Session, StepAction, StepHook,
};
use kestrel_prompts::constrain::{
    GrammarTokenizer, NamedFunction, ToolCallHook, ToolChoice, ToolChoiceMode,
};
use kestrel_prompts::messages::ChatRequest;
use kestrel_prompts::parser::{OutputParser, ParseEvent, ParserConfig};
use kestrel_prompts::template::ChatTemplate;
use kestrel_prompts::xml_calls::{CallFormat, parameter_schemas};
use serde_json::{Value, json};

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {
            "type": "object", "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo", "Zürich"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"], "additionalProperties": false}}}),
        json!({"type": "function", "function": {"name": "set_alarm", "description": "Alarm", "parameters": {
            "type": "object", "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23}, "loud": {"type": "boolean"}},
            "required": ["hour", "loud"], "additionalProperties": false}}}),
        json!({"type": "function", "function": {"name": "note", "description": "Note", "parameters": {
            "type": "object", "properties": {"text": {"type": "string", "maxLength": 6}},
            "required": ["text"], "additionalProperties": false}}}),
    ]
}

struct Setup {
    model: Arc<Model>,
    grammar: GrammarTokenizer,
    prompt: Vec<u32>,
    /// The same request in Qwen3-Coder's template.
    coder_prompt: Vec<u32>,
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
        ChatRequest::from_json(r#"{"messages": [{"role": "user", "content": "Do something."}]}"#)
            .expect("request");
    request.tools = tools();
    request.enable_thinking = Some(false);
    let prompt = ChatTemplate::qwen3()
        .prompt(&request, tokenizer)
        .expect("prompt")
        .ids;
    let coder = ChatTemplate::new(&kestrel_tests::llama_cpp_template("Qwen3-Coder.jinja"))
        .expect("Qwen3-Coder's template");
    let coder_prompt = coder.prompt(&request, tokenizer).expect("prompt").ids;
    Setup {
        model,
        grammar,
        prompt,
        coder_prompt,
    }
}

/// Generates one turn under `choice` and returns the parser's events.
fn turn(s: &Setup, choice: &ToolChoice, seed: u64) -> Vec<ParseEvent> {
    turn_in(s, CallFormat::Json, choice, seed)
}

/// [`turn`] for a model that writes calls in `format` (prompted with its template).
fn turn_in(s: &Setup, format: CallFormat, choice: &ToolChoice, seed: u64) -> Vec<ParseEvent> {
    let mut hook =
        ToolCallHook::for_format(format, &s.grammar, &tools(), choice, false, false).expect("hook");
    let errors = hook.errors();
    let sampling = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let mut session = Session::new(s.model.clone());
    let prompt = match format {
        CallFormat::Json => s.prompt.clone(),
        CallFormat::Xml => s.coder_prompt.clone(),
    };
    let request = GenerateRequest {
        prompt,
        max_tokens: 80,
        sampling,
        stop_ids: None,
    };
    let known = if matches!(choice, ToolChoice::Mode(ToolChoiceMode::None)) {
        vec![]
    } else {
        vec!["get_weather".into(), "set_alarm".into(), "note".into()]
    };
    let mut parser = OutputParser::new(ParserConfig {
        known_tools: known,
        parameter_schemas: parameter_schemas(&tools()),
        ..Default::default()
    });
    let mut events = Vec::new();
    for token in session.generate(request, Some(&mut hook)) {
        events.extend(parser.push(&token.expect("token").text));
    }
    events.extend(parser.finish());
    let errors = errors.take();
    assert!(errors.is_empty(), "{errors:?}");
    events
}

fn calls(events: &[ParseEvent]) -> Vec<(String, Value)> {
    events
        .iter()
        .filter_map(|e| match e {
            ParseEvent::ToolCallComplete {
                name, arguments, ..
            } => Some((name.clone(), Value::Object(arguments.clone()))),
            _ => None,
        })
        .collect()
}

fn schema_of(name: &str) -> Value {
    tools()
        .into_iter()
        .find(|t| t["function"]["name"] == name)
        .expect("tool")["function"]["parameters"]
        .clone()
}

#[test]
fn required_calls_always_parse_and_validate() {
    let s = setup();
    for seed in 0..12 {
        let events = turn(&s, &ToolChoice::Mode(ToolChoiceMode::Required), seed);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, ParseEvent::ParseError { .. })),
            "seed {seed}: {events:?}"
        );
        let calls = calls(&events);
        assert!(!calls.is_empty(), "seed {seed}: {events:?}");
        for (name, args) in calls {
            let validator = jsonschema::validator_for(&schema_of(&name)).expect("schema");
            assert!(validator.is_valid(&args), "seed {seed}: {name} {args}");
        }
    }
}

/// Qwen3-Coder's form: every call is `<function=NAME>` with typed `<parameter=KEY>` values, and
/// parses and validates (enums, integer ranges, booleans, a string's length); a named choice
/// calls only that tool, `none` never calls.
#[test]
fn xml_calls_under_the_constraint_parse_and_validate() {
    let s = setup();
    let required = ToolChoice::Mode(ToolChoiceMode::Required);
    for seed in 0..8 {
        let events = turn_in(&s, CallFormat::Xml, &required, seed);
        let raw: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                ParseEvent::ToolCallComplete { raw, .. } => Some(raw.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            !raw.is_empty() && raw.iter().all(|r| r.starts_with("\n<function=")),
            "seed {seed}: {events:?}"
        );
        for (name, args) in calls(&events) {
            let validator = jsonschema::validator_for(&schema_of(&name)).expect("schema");
            assert!(validator.is_valid(&args), "seed {seed}: {name} {args}");
        }
    }
    let named = ToolChoice::Named {
        kind: "function".into(),
        function: NamedFunction {
            name: "get_weather".into(),
        },
    };
    let none = ToolChoice::Mode(ToolChoiceMode::None);
    for seed in 0..4 {
        let calls = calls(&turn_in(&s, CallFormat::Xml, &named, seed));
        assert!(
            !calls.is_empty() && calls.iter().all(|(n, _)| n == "get_weather"),
            "seed {seed}: {calls:?}"
        );
        assert!(calls_in(&turn_in(&s, CallFormat::Xml, &none, seed)) == 0);
    }
}

fn calls_in(events: &[ParseEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, ParseEvent::ToolCallStarted { .. }))
        .count()
}

#[test]
fn none_never_calls_and_named_calls_only_that_tool() {
    let s = setup();
    for seed in 0..12 {
        let events = turn(&s, &ToolChoice::Mode(ToolChoiceMode::None), seed);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, ParseEvent::ToolCallStarted { .. })),
            "seed {seed}: {events:?}"
        );
    }
    let named = ToolChoice::Named {
        kind: "function".into(),
        function: NamedFunction {
            name: "set_alarm".into(),
        },
    };
    for seed in 0..6 {
        let calls = calls(&turn(&s, &named, seed));
        assert!(
            !calls.is_empty() && calls.iter().all(|(n, _)| n == "set_alarm"),
            "seed {seed}: {calls:?}"
        );
    }
}

#[test]
fn required_lets_a_thinking_turn_think_first_then_call() {
    let s = setup();
    let tokenizer = s.model.require_tokenizer().expect("tokenizer");
    let id = |t: &str| tokenizer.token_id(t).expect(t) as usize;
    let vocab = s.model.config().vocab_size;
    let required = ToolChoice::Mode(ToolChoiceMode::Required);
    let allowed = |hook: &mut ToolCallHook| {
        let mut logits = vec![0.0f32; vocab];
        hook.before_step(&[], &mut logits);
        (
            logits[id("<think>")].is_finite(),
            logits[id("<tool_call>")].is_finite(),
        )
    };
    let mut thinking =
        ToolCallHook::new(&s.grammar, &tools(), &required, false, true).expect("hook");
    assert_eq!(
        allowed(&mut thinking),
        (true, true),
        "a thinking turn may think first"
    );
    thinking.on_token(id("<think>") as u32, false);
    let mut logits = vec![0.0f32; vocab];
    thinking.before_step(&[], &mut logits);
    assert!(
        logits.iter().filter(|l| l.is_finite()).count() > 1000,
        "thinking is free"
    );
    thinking.on_token(id("</think>") as u32, false);
    assert_eq!(
        allowed(&mut thinking),
        (false, true),
        "after thinking, the call"
    );
    let mut quiet = ToolCallHook::new(&s.grammar, &tools(), &required, false, false).expect("hook");
    assert_eq!(
        allowed(&mut quiet),
        (false, true),
        "thinking off: the call at once"
    );
}

#[test]
fn a_grammar_that_fails_is_reported_and_the_call_goes_on_unconstrained() {
    let s = setup();
    let tokenizer = s.model.require_tokenizer().expect("tokenizer");
    let broken = vec![
        json!({"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}}}),
    ];
    let auto = ToolChoice::Mode(ToolChoiceMode::Auto);
    let mut hook = ToolCallHook::new(&s.grammar, &broken, &auto, false, false).expect("hook");
    let errors = hook.errors();
    hook.on_token(tokenizer.token_id("<tool_call>").expect("call"), false);
    let mut logits = vec![0.0f32; s.model.config().vocab_size];
    hook.before_step(&[], &mut logits);
    assert!(logits.iter().all(|l| l.is_finite()), "unconstrained");
    let errors = errors.take();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("tool-call grammar"), "{errors:?}");
}

/// Small models often write a call without `<tool_call>` tags, which the parser accepts; its
/// arguments are held to the schema from the moment the object names an offered tool.
#[test]
fn an_untagged_call_is_constrained_once_it_names_an_offered_tool() {
    let s = setup();
    let tokenizer = s.model.require_tokenizer().expect("tokenizer");
    let vocab = s.model.config().vocab_size;
    let auto = ToolChoice::Mode(ToolChoiceMode::Auto);
    let first = |text: &str| tokenizer.encode_plain(text).expect("ids")[0] as usize;
    // The logits left after the model wrote `text` (each token through the hook as it would
    // be generated), and the hook's action there.
    let after = |text: &str| {
        let mut hook = ToolCallHook::new(&s.grammar, &tools(), &auto, false, false).expect("hook");
        let errors = hook.errors();
        for id in tokenizer.encode_plain(text).expect("ids") {
            let mut logits = vec![0.0f32; vocab];
            assert!(matches!(
                hook.before_step(&[], &mut logits),
                StepAction::Sample
            ));
            assert!(
                logits[id as usize].is_finite(),
                "{text:?}: token {id} was masked"
            );
            hook.on_token(id, false);
        }
        let mut logits = vec![0.0f32; vocab];
        let action = hook.before_step(&[], &mut logits);
        assert!(errors.take().is_empty());
        (logits, action)
    };

    let (logits, _) = after("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"");
    assert!(logits[first("Oslo")].is_finite(), "an enum value");
    assert!(!logits[first("London")].is_finite(), "not in the enum");

    let (logits, _) = after("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"");
    assert!(logits[first("days")].is_finite());
    assert!(
        !logits[first("target")].is_finite(),
        "an invented argument cannot start"
    );

    // The model's own layout, in a fence.
    let (logits, _) =
        after("```json\n{\n  \"name\": \"set_alarm\",\n  \"arguments\": {\n    \"hour\": ");
    assert!(logits[first("7")].is_finite());
    assert!(!logits[first("\"")].is_finite(), "hour is an integer");

    // Whitespace is the model's to choose, within bounds: a call cannot be padded forever.
    let (logits, _) = after("{\"name\": \"note\", \"arguments\": {\n");
    assert!(logits[first(" ")].is_finite());
    let padded = format!("{{\"name\": \"note\", \"arguments\": {{{}", " ".repeat(40));
    let (logits, _) = after(&padded);
    assert!(!logits[first(" ")].is_finite(), "40 spaces are the most");

    // A complete call hands generation back, with nothing forced (there is no tag to close).
    let (logits, action) = after("{\"name\": \"note\", \"arguments\": {\"text\": \"hi\"}}");
    assert!(matches!(action, StepAction::Sample));
    assert!(logits.iter().all(|l| l.is_finite()));

    // An object that is not a call, and text, stay free.
    for text in [
        "{\"name\": \"Ada\", \"",
        "The weather in {\"name\": \"get_weather\", \"",
    ] {
        let (logits, _) = after(text);
        assert!(logits.iter().all(|l| l.is_finite()), "{text:?}");
    }
}

/// Under `none` a turn cannot call, and a call written as text would become its answer: the
/// tokens that would make the answer a bare call of an offered tool are masked.
#[test]
fn under_none_an_untagged_call_cannot_be_written() {
    let s = setup();
    let tokenizer = s.model.require_tokenizer().expect("tokenizer");
    let vocab = s.model.config().vocab_size;
    let none = ToolChoice::Mode(ToolChoiceMode::None);
    let after = |text: &str| {
        let mut hook = ToolCallHook::new(&s.grammar, &tools(), &none, false, false).expect("hook");
        for id in tokenizer.encode_plain(text).expect("ids") {
            hook.before_step(&[], &mut vec![0.0f32; vocab]);
            hook.on_token(id, false);
        }
        let mut logits = vec![0.0f32; vocab];
        hook.before_step(&[], &mut logits);
        logits
    };
    let quote = tokenizer.encode_plain("\"").expect("ids")[0] as usize;
    let logits = after("{\"name\": \"get_weather");
    assert!(!logits[quote].is_finite(), "the name cannot be closed");
    assert!(
        logits.iter().filter(|l| l.is_finite()).count() > vocab / 2,
        "only what completes a call is masked"
    );
    let logits = after("{\"name\": \"Ada");
    assert!(logits[quote].is_finite(), "another object is free");
    let logits = after("The answer");
    assert_eq!(
        logits.iter().filter(|l| !l.is_finite()).count(),
        1,
        "only <tool_call>"
    );
}

/// vLLM's form of the constraint: a tag per tool the turn may call, from Qwen's call prefix with
/// the tool's name to the call's end, its content the tool's schema; lazily triggered, and
/// required at once when the answer must be a call.
#[test]
fn the_structural_tag_has_a_tag_per_callable_tool() {
    use kestrel_prompts::structural_tag::tool_call_structural_tag;
    let s = setup();
    let tag = |format: CallFormat, choice: ToolChoice| {
        let hook = ToolCallHook::for_format(format, &s.grammar, &tools(), &choice, false, false)
            .expect("hook");
        tool_call_structural_tag(&hook)
    };
    let auto = tag(CallFormat::Json, ToolChoice::Unset).expect("a tag");
    assert_eq!(auto["type"], "structural_tag");
    let format = &auto["format"];
    assert_eq!(format["triggers"], json!(["<tool_call>"]));
    assert_eq!(format["at_least_one"], false);
    let tags = format["tags"].as_array().expect("tags");
    assert_eq!(tags.len(), 3);
    assert_eq!(
        tags[0]["begin"],
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
    );
    assert_eq!(tags[0]["end"], "}\n</tool_call>");
    assert_eq!(
        tags[0]["content"]["json_schema"],
        tools()[0]["function"]["parameters"]
    );
    let named = tag(
        CallFormat::Json,
        ToolChoice::Named {
            kind: "function".into(),
            function: NamedFunction {
                name: "note".into(),
            },
        },
    )
    .expect("a tag");
    let tags = named["format"]["tags"].as_array().expect("tags");
    assert_eq!(tags.len(), 1);
    assert!(
        tags[0]["begin"]
            .as_str()
            .expect("begin")
            .contains("\"note\"")
    );
    assert_eq!(named["format"]["at_least_one"], true);
    assert!(tag(CallFormat::Json, ToolChoice::Mode(ToolChoiceMode::None)).is_none());
    assert!(tag(CallFormat::Xml, ToolChoice::Unset).is_none());
}
