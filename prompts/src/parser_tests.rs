use proptest::prelude::*;
use serde_json::json;

use super::*;

fn config(tools: &[&str]) -> ParserConfig {
    ParserConfig {
        known_tools: tools.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Events for `chunks`, with consecutive deltas of the same kind merged (how deltas are grouped is
/// the one thing allowed to depend on the split).
fn run(config: &ParserConfig, chunks: &[&str]) -> Vec<ParseEvent> {
    let mut p = OutputParser::new(config.clone());
    let mut events = Vec::new();
    for c in chunks {
        events.extend(p.push(c));
    }
    events.extend(p.finish());
    coalesce(events)
}

fn coalesce(events: Vec<ParseEvent>) -> Vec<ParseEvent> {
    let mut out: Vec<ParseEvent> = Vec::new();
    for e in events {
        match (out.last_mut(), e) {
            (
                Some(ParseEvent::ThinkingDelta { text: a }),
                ParseEvent::ThinkingDelta { text: b },
            ) => a.push_str(&b),
            (Some(ParseEvent::TextDelta { text: a }), ParseEvent::TextDelta { text: b }) => {
                a.push_str(&b)
            }
            (
                Some(ParseEvent::ToolCallDelta { index: i, text: a }),
                ParseEvent::ToolCallDelta { index: j, text: b },
            ) if *i == j => a.push_str(&b),
            (_, e) => out.push(e),
        }
    }
    out
}

fn text(s: &str) -> ParseEvent {
    ParseEvent::TextDelta { text: s.into() }
}
fn thinking(s: &str) -> ParseEvent {
    ParseEvent::ThinkingDelta { text: s.into() }
}
fn complete(index: usize, name: &str, args: Value, raw: &str) -> ParseEvent {
    let Value::Object(arguments) = args else {
        panic!("object")
    };
    ParseEvent::ToolCallComplete {
        index,
        name: name.into(),
        arguments,
        raw: raw.into(),
    }
}

const SAMPLES: &[&str] = &[
    "<think>\nLet me check.\n</think>\n\nIt is sunny.",
    "<think>plan</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": \"a<b\"}}\n</tool_call>",
    "<think>maybe <tool_call>{\"name\": \"x\"}</tool_call> later</think>ok",
    "Calling now.\n```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n```",
    "  {\"name\": \"get_weather\", \"arguments\": {'city': 'Rome',}}",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}",
    "<think>never closed",
    "<tool_call>{not json at all}</tool_call>after",
    "```json\n[1, 2]\n``` and {\"name\": \"unknown\"} text 😀",
];

#[test]
fn thinking_then_answer() {
    let events = run(&config(&[]), &[SAMPLES[0]]);
    assert_eq!(
        events,
        vec![
            thinking("\nLet me check.\n"),
            text("\n\nIt is sunny."),
            ParseEvent::EndOfTurn
        ]
    );
}

#[test]
fn several_calls_in_one_turn() {
    let events = run(&config(&["get_weather", "search"]), &[SAMPLES[1]]);
    let raw0 = "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n";
    let raw1 = "\n{\"name\": \"search\", \"arguments\": {\"q\": \"a<b\"}}\n";
    assert_eq!(
        events,
        vec![
            thinking("plan"),
            ParseEvent::ToolCallStarted { index: 0 },
            ParseEvent::ToolCallDelta {
                index: 0,
                text: raw0.into()
            },
            complete(0, "get_weather", json!({"city": "Zürich"}), raw0),
            ParseEvent::ToolCallStarted { index: 1 },
            ParseEvent::ToolCallDelta {
                index: 1,
                text: raw1.into()
            },
            complete(1, "search", json!({"q": "a<b"}), raw1),
            ParseEvent::EndOfTurn,
        ]
    );
}

#[test]
fn calls_inside_thinking_follow_the_policy() {
    let ignored = run(&config(&["x"]), &[SAMPLES[2]]);
    assert_eq!(
        ignored[0],
        thinking("maybe <tool_call>{\"name\": \"x\"}</tool_call> later")
    );
    let parsed = run(
        &ParserConfig {
            calls_in_thinking: CallsInThinking::Parse,
            ..config(&["x"])
        },
        &[SAMPLES[2]],
    );
    assert!(parsed.contains(&complete(0, "x", json!({}), "{\"name\": \"x\"}")));
    assert!(parsed.contains(&thinking(" later")));
    assert!(parsed.contains(&text("ok")));
}

#[test]
fn untagged_calls_of_known_tools() {
    let events = run(&config(&["get_weather"]), &[SAMPLES[3]]);
    assert_eq!(events[0], text("Calling now.\n"));
    assert!(
        matches!(&events[3], ParseEvent::ToolCallComplete { name, .. } if name == "get_weather")
    );
    let events = run(&config(&["get_weather"]), &[SAMPLES[4]]);
    assert!(events.contains(&complete(
        0,
        "get_weather",
        json!({"city": "Rome"}),
        "{\"name\": \"get_weather\", \"arguments\": {'city': 'Rome',}}"
    )));
    // Unknown tools and non-call JSON stay text.
    let events = run(&config(&["get_weather"]), &[SAMPLES[8]]);
    assert!(
        events
            .iter()
            .all(|e| matches!(e, ParseEvent::TextDelta { .. } | ParseEvent::EndOfTurn)),
        "{events:?}"
    );
    // Without offered tools nothing untagged is a call.
    let events = run(&config(&[]), &[SAMPLES[4]]);
    assert_eq!(events, vec![text(SAMPLES[4]), ParseEvent::EndOfTurn]);
}

#[test]
fn unterminated_blocks_at_eos() {
    let events = run(&config(&[]), &[SAMPLES[5]]);
    assert!(
        events.iter().any(
            |e| matches!(e, ParseEvent::ToolCallComplete { name, .. } if name == "get_weather")
        )
    );
    let events = run(&config(&[]), &[SAMPLES[6]]);
    assert_eq!(
        events,
        vec![thinking("never closed"), ParseEvent::EndOfTurn]
    );
    let events = run(
        &ParserConfig {
            starts_in_thinking: true,
            ..config(&[])
        },
        &["still thinking</think>answer"],
    );
    assert_eq!(
        events,
        vec![
            thinking("still thinking"),
            text("answer"),
            ParseEvent::EndOfTurn
        ]
    );
}

#[test]
fn broken_calls_are_parse_errors() {
    let events = run(&config(&[]), &[SAMPLES[7]]);
    assert!(
        matches!(&events[2], ParseEvent::ParseError { index: 0, raw, .. } if raw == "{not json at all}"),
        "{events:?}"
    );
    assert_eq!(events[3], text("after"));
    for bad in [
        "[1]",
        "{\"arguments\": {}}",
        "{\"name\": \"f\", \"arguments\": 3}",
        "{\"name\": \"f\", \"arguments\": \"[\"}",
    ] {
        assert!(parse_call(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_call("{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}")
            .expect("string args")
            .1["a"],
        json!(1)
    );
}

#[test]
fn every_two_and_three_way_split_gives_the_same_events() {
    let cfg = config(&["get_weather", "search", "x"]);
    for sample in SAMPLES {
        let whole = run(&cfg, &[sample]);
        let cuts: Vec<usize> = (0..=sample.len())
            .filter(|&i| sample.is_char_boundary(i))
            .collect();
        for &a in &cuts {
            assert_eq!(
                run(&cfg, &[&sample[..a], &sample[a..]]),
                whole,
                "split at {a} of {sample:?}"
            );
            for &b in cuts.iter().filter(|&&b| b >= a).step_by(3) {
                assert_eq!(
                    run(&cfg, &[&sample[..a], &sample[a..b], &sample[b..]]),
                    whole,
                    "split at {a},{b} of {sample:?}"
                );
            }
        }
    }
}

#[test]
fn with_no_calls_allowed_nothing_is_a_call() {
    let cfg = ParserConfig {
        no_calls: true,
        ..config(&["x"])
    };
    for sample in [
        "<tool_call>\n{\"name\": \"x\", \"arguments\": {}}\n</tool_call>",
        "{\"name\": \"x\", \"arguments\": {}}",
        "```json\n{\"name\": \"x\", \"arguments\": {}}\n```",
    ] {
        let events = run(&cfg, &[sample]);
        assert_eq!(
            events,
            vec![text(sample), ParseEvent::EndOfTurn],
            "{sample}"
        );
    }
}

#[test]
fn a_call_cut_by_the_token_limit_is_reported_not_repaired() {
    let cut = "<tool_call>\n{\"name\": \"x\", \"arguments\": {\"n\": 12";
    let mut p = OutputParser::new(config(&["x"]));
    let mut events = p.push(cut);
    events.extend(p.finish_truncated());
    let events = coalesce(events);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ParseEvent::ParseError { message, .. } if message == CUT_OFF)),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ParseEvent::ToolCallComplete { .. }))
    );
    // The same text ending normally is repaired into a call.
    let repaired = run(&config(&["x"]), &[cut]);
    assert!(
        repaired
            .iter()
            .any(|e| matches!(e, ParseEvent::ToolCallComplete { .. }))
    );
    // A cut turn with no call open ends as usual.
    let mut p = OutputParser::new(config(&["x"]));
    let mut events = p.push("plain answer, cut");
    events.extend(p.finish_truncated());
    assert_eq!(
        coalesce(events),
        vec![text("plain answer, cut"), ParseEvent::EndOfTurn]
    );
}

fn xml_schemas() -> BTreeMap<String, Value> {
    crate::xml_calls::parameter_schemas(&[json!({"type": "function", "function": {"name": "x",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}}}})])
}

/// Qwen3-Coder's form: two calls in a turn, text before them, values typed by the schema, the
/// same events however the output is cut.
#[test]
fn xml_calls_are_parsed_with_typed_values_in_any_split() {
    let out = "Let me look.\n<tool_call>\n<function=x>\n<parameter=n>\n7\n</parameter>\n\
               <parameter=s>\nline one\n</tool_call> inside\n</parameter>\n</function>\n</tool_call>\n\
               <tool_call>\n<function=x>\n<parameter=n>\n8\n</parameter>\n</function>\n</tool_call>";
    let mut cfg = config(&["x"]);
    cfg.parameter_schemas = xml_schemas();
    let events = run(&cfg, &[out]);
    let calls: Vec<(&str, &Map<String, Value>)> = events
        .iter()
        .filter_map(|e| match e {
            ParseEvent::ToolCallComplete {
                name, arguments, ..
            } => Some((name.as_str(), arguments)),
            _ => None,
        })
        .collect();
    // A `</tool_call>` inside a value ends the call there, as in the JSON form: the first call
    // keeps what it had.
    assert_eq!(calls.len(), 2, "{events:?}");
    assert_eq!(
        Value::Object(calls[0].1.clone()),
        json!({"n": 7, "s": "line one"})
    );
    assert_eq!(Value::Object(calls[1].1.clone()), json!({"n": 8}));
    assert!(matches!(&events[0], ParseEvent::TextDelta { text } if text == "Let me look.\n"));
    for cut in 1..out.len() {
        if out.is_char_boundary(cut) {
            assert_eq!(
                run(&cfg, &[&out[..cut], &out[cut..]]),
                events,
                "cut at {cut}"
            );
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_output_never_panics_and_any_split_agrees(
        parts in proptest::collection::vec(prop_oneof![
            Just("<think>".to_string()), Just("</think>".to_string()), Just("<tool_call>".to_string()),
            Just("</tool_call>".to_string()), Just("```json".to_string()), Just("```".to_string()),
            Just("{\"name\": \"x\", \"arguments\": {".to_string()), Just("}".to_string()), Just("'".to_string()),
            Just("<function=x>".to_string()), Just("<parameter=n>".to_string()), Just("\n".to_string()),
            Just("</parameter>".to_string()), Just("</function>".to_string()),
            "[ -~]{0,6}", "\\PC{0,3}",
        ], 0..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let s: String = parts.concat();
        let mut cfg = config(&["x"]);
        cfg.parameter_schemas = xml_schemas();
        let whole = run(&cfg, &[&s]);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(s.len() + 1)).filter(|&i| s.is_char_boundary(i)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&s[last..p]);
            last = p;
        }
        chunks.push(&s[last..]);
        prop_assert_eq!(run(&cfg, &chunks), whole);
    }
}
