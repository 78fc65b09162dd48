//! Prompt rendering against transformers' `apply_chat_template` (cases recorded by
//! scripts/oracle/make_chat_cases.py with the real Qwen3 tokenizer and template): text equal byte
//! for byte, ids equal except where a message spells special tokens, which must stay plain text.

use kestrel_tests::{assets, fixtures};

use kestrel_engine::Tokenizer;
use kestrel_prompts::messages::ChatRequest;
use kestrel_prompts::template::ChatTemplate;
use kestrel_prompts::xml_calls::CallFormat;
use serde_json::Value;

fn cases() -> Vec<Value> {
    let path = fixtures().join("chat/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("cases")).expect("json")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn setup() -> (Tokenizer, ChatTemplate) {
    let tokenizer = Tokenizer::load(&assets().join("qwen3-tokenizer")).expect("tokenizer");
    let template =
        ChatTemplate::new(tokenizer.chat_template().expect("template")).expect("compiles");
    (tokenizer, template)
}

#[test]
fn text_and_ids_match_transformers() {
    let (tokenizer, template) = setup();
    let cases = cases();
    assert!(cases.len() >= 12);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let request = ChatRequest::from_json(&case["request"].to_string())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let prompt = template
            .prompt(&request, &tokenizer)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            prompt.text,
            case["text"].as_str().expect("text"),
            "{name}: text"
        );
        if name.starts_with("injection") {
            continue;
        }
        assert_eq!(prompt.ids, ids(&case["ids"]), "{name}: ids");
    }
}

/// Qwen3-Coder's template (llama.cpp's copy) with the same tokenizer: tools as XML, calls in the
/// XML form (arguments given as a JSON string too), Python's spellings of values.
#[test]
fn qwen3_coder_template_matches_transformers() {
    let (tokenizer, _) = setup();
    let template = ChatTemplate::new(&kestrel_tests::llama_cpp_template("Qwen3-Coder.jinja"))
        .expect("Qwen3-Coder's template compiles");
    assert_eq!(template.call_format(), CallFormat::Xml);
    assert!(!template.thinks());
    let path = fixtures().join("chat/coder_cases.json");
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("cases")).expect("json");
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let mut request = ChatRequest::from_json(&case["request"].to_string())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let prompt = template
            .prompt(&request, &tokenizer)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            prompt.text,
            case["text"].as_str().expect("text"),
            "{name}: text"
        );
        if !name.starts_with("injection") {
            assert_eq!(prompt.ids, ids(&case["ids"]), "{name}: ids");
        }
        // OpenAI clients send arguments as a JSON string: the same prompt.
        for message in &mut request.messages {
            for call in &mut message.tool_calls {
                call.function.arguments = Value::String(call.function.arguments.to_string());
            }
        }
        let again = template.render(&request).expect("render");
        assert_eq!(again, prompt.text, "{name}: string arguments");
    }
}

#[test]
fn special_text_in_content_stays_plain_text() {
    let (tokenizer, template) = setup();
    let im_end = tokenizer.token_id("<|im_end|>").expect("im_end");
    let im_start = tokenizer.token_id("<|im_start|>").expect("im_start");
    let think = tokenizer.token_id("<think>").expect("think");
    for case in cases().into_iter().filter(|c| {
        c["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("injection"))
    }) {
        let name = case["name"].as_str().expect("name");
        let request = ChatRequest::from_json(&case["request"].to_string()).expect("request");
        let prompt = template.prompt(&request, &tokenizer).expect("prompt");
        let hf = ids(&case["ids"]);
        // transformers turns the injected text into control tokens; Kestrel must not.
        let count = |v: &[u32], id: u32| v.iter().filter(|&&x| x == id).count();
        assert!(
            count(&hf, im_end) > count(&prompt.ids, im_end)
                || count(&hf, think) > count(&prompt.ids, think),
            "{name}"
        );
        // The markup the template writes is still there, and the text decodes to the same prompt.
        assert_eq!(
            count(&prompt.ids, im_start),
            prompt.text.matches("<|im_start|>").count()
                - request
                    .messages
                    .iter()
                    .map(|m| m
                        .content
                        .as_ref()
                        .map_or(0, |c| c.text().matches("<|im_start|>").count()))
                    .sum::<usize>()
        );
        assert_eq!(
            tokenizer.decode(&prompt.ids).expect("decode"),
            prompt.text,
            "{name}"
        );
    }
}

#[test]
fn fallback_template_is_qwen3s() {
    let (tokenizer, template) = setup();
    let fallback = ChatTemplate::qwen3();
    for case in cases() {
        let request = ChatRequest::from_json(&case["request"].to_string()).expect("request");
        assert_eq!(
            fallback.render(&request).expect("fallback"),
            template.render(&request).expect("model's")
        );
    }
    let _ = tokenizer;
}
