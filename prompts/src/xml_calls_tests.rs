use super::*;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::ApproximateTokEnv;
use llguidance::{Matcher, ParserFactory};
use serde_json::json;

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "note": {"type": "string", "maxLength": 5},
                "detailed": {"type": "boolean"}
            },
            "required": ["city"]}}}),
        json!({"type": "function", "function": {"name": "write_file", "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "content": {"type": "string"},
                "options": {"type": "object", "properties": {"mode": {"type": "integer"}}},
                "tags": {"type": "array", "items": {"type": "string"}},
                "ratio": {"anyOf": [{"type": "number"}, {"type": "null"}]}
            },
            "required": ["path", "content"]}}}),
    ]
}

fn parse(body: &str) -> Result<(String, Map<String, Value>), String> {
    parse_xml_call(body, &parameter_schemas(&tools()))
}

#[test]
fn the_form_is_read_from_the_template() {
    let coder = "{{- '\\n<tool_call>\\n<function=' + tool_call.name + '>\\n' }}{{- '<parameter=' + k + '>\\n' }}";
    assert_eq!(CallFormat::of_template(coder), CallFormat::Xml);
    let qwen3 = r#"{{- '<tool_call>\n{"name": "' }}"#;
    assert_eq!(CallFormat::of_template(qwen3), CallFormat::Json);
}

#[test]
fn values_are_typed_by_the_schema() {
    let body = "\n<function=get_weather>\n<parameter=city>\nSão Paulo\n</parameter>\n\
                <parameter=days>\n3\n</parameter>\n<parameter=detailed>\nTrue\n</parameter>\n</function>\n";
    let (name, args) = parse(body).expect("call");
    assert_eq!(name, "get_weather");
    assert_eq!(
        Value::Object(args),
        json!({"city": "São Paulo", "days": 3, "detailed": true})
    );
}

#[test]
fn strings_keep_their_text_and_structures_are_parsed() {
    let body = "<function=write_file>\n<parameter=path>\n/tmp/a.py\n</parameter>\n\
                <parameter=content>\ndef f():\n    return \"<x>\" # 42\n\n</parameter>\n\
                <parameter=options>\n{\"mode\": 420}\n</parameter>\n\
                <parameter=tags>\n[\"a\", \"b\"]\n</parameter>\n\
                <parameter=ratio>\n0.5\n</parameter>\n</function>";
    let (_, args) = parse(body).expect("call");
    // Only the one newline on each side is layout; the value's own trailing newline stays.
    assert_eq!(
        args["content"],
        json!("def f():\n    return \"<x>\" # 42\n")
    );
    assert_eq!(args["path"], json!("/tmp/a.py"));
    assert_eq!(args["options"], json!({"mode": 420}));
    assert_eq!(args["tags"], json!(["a", "b"]));
    assert_eq!(args["ratio"], json!(0.5));
    // A number written as a string is kept for the schema check to report, as is bad JSON.
    let (_, args) =
        parse("<function=get_weather>\n<parameter=days>\nthree\n</parameter>\n</function>")
            .expect("call");
    assert_eq!(args["days"], json!("three"));
    // An unknown tool or parameter: text.
    let (name, args) =
        parse("<function=other>\n<parameter=n>\n5\n</parameter>\n</function>").expect("call");
    assert_eq!((name.as_str(), &args["n"]), ("other", &json!("5")));
}

#[test]
fn missing_closers_keep_what_was_written() {
    // Cut after a value; a parameter not closed before the next one; no `</function>`.
    let (_, args) =
        parse("<function=get_weather>\n<parameter=city>\nOslo\n<parameter=days>\n2").expect("call");
    assert_eq!(Value::Object(args), json!({"city": "Oslo", "days": 2}));
    let (name, args) = parse("<function=get_weather>").expect("no parameters");
    assert_eq!((name.as_str(), args.len()), ("get_weather", 0));
}

#[test]
fn malformed_calls_are_named() {
    for (body, word) in [
        ("{\"name\": \"x\"}", "<function="),
        ("<function=get_weather", "not closed"),
        ("<function=>\n</function>", "no function name"),
        (
            "<function=get_weather>\n<parameter=>\n1\n</parameter>",
            "no name",
        ),
        ("<function=get_weather>\n<parameter=city", "not closed"),
    ] {
        let err = parse(body).expect_err(body);
        assert!(err.contains(word), "{body}: {err}");
    }
}

/// Feeds `text` byte by byte (a one-byte-per-token vocabulary) to the grammar.
fn grammar_takes(lark: &str, text: &str) -> bool {
    let env = ApproximateTokEnv::single_byte_env();
    let factory = ParserFactory::new_simple(&env).expect("factory");
    let parser = factory
        .create_parser(TopLevelGrammar::from_lark(lark.to_string()))
        .expect("grammar compiles");
    let mut matcher = Matcher::new(Ok(parser));
    let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
    bytes.iter().all(|&b| matcher.consume_token(b).is_ok())
        && matcher.is_accepting().unwrap_or(false)
}

#[test]
fn the_grammar_admits_calls_of_the_schema_and_nothing_else() {
    let lark = xml_call_lark(&tools(), None).expect("grammar");
    let ok = [
        "\n<function=get_weather>\n<parameter=city>\nZürich\nand more\n</parameter>\n</function>",
        "\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n<parameter=unit>\ncelsius\n</parameter>\n\
         <parameter=days>\n14\n</parameter>\n<parameter=note>\nfive!\n</parameter>\n<parameter=detailed>\nfalse\n</parameter>\n</function>",
        "\n<function=write_file>\n<parameter=path>\na\n</parameter>\n<parameter=content>\nx\n</parameter>\n\
         <parameter=options>\n{\"mode\": 1}\n</parameter>\n</function>",
    ];
    for text in ok {
        assert!(grammar_takes(&lark, text), "refused: {text:?}");
    }
    let refused = [
        // Another tool, a missing required parameter, a value outside its type or enum.
        "\n<function=delete_all>\n</function>",
        "\n<function=get_weather>\n</function>",
        "\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n<parameter=unit>\nkelvin\n</parameter>\n</function>",
        "\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n<parameter=days>\n2.5\n</parameter>\n</function>",
        "\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n<parameter=days>\n15\n</parameter>\n</function>",
        "\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n<parameter=note>\nsix ch\n</parameter>\n</function>",
        // An invented parameter.
        "\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n<parameter=country>\nIT\n</parameter>\n</function>",
    ];
    for text in refused {
        assert!(!grammar_takes(&lark, text), "admitted: {text:?}");
    }
    let only = xml_call_lark(&tools(), Some("write_file")).expect("named");
    assert!(!grammar_takes(&only, ok[0]));
    assert!(xml_call_lark(&tools(), Some("nothing")).is_none());
}
