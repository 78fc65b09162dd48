//! End-to-end: the `kestrel` binary on real models (the Qwen2.5-Coder GGUF, a tiny Qwen3 driven by
//! the real Qwen3 tokenizer), its JSON output, and its errors on bad input.

use kestrel_tests::{assets, fixtures, kestrel};
use std::process::{Command, Output};

use serde_json::Value;

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run kestrel")
}

fn stdout_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kestrel failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id"))
        .collect()
}

#[test]
fn generate_json_on_the_gguf_matches_llama_cpp() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gguf/qwen2.5-coder-greedy.json")).expect("ref"),
    )
    .expect("json");
    let gguf = assets().join("qwen2.5-coder-0.5b-instruct.gguf");
    let out = run(kestrel()
        .args([
            "generate",
            "--json",
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--device",
            "cpu",
            "--model",
        ])
        .arg(&gguf)
        .arg("--prompt")
        .arg(reference["prompt"].as_str().expect("prompt")));
    let v = stdout_json(&out);
    assert_eq!(ids(&v["prompt_ids"]), ids(&reference["prompt_ids"]));
    assert_eq!(ids(&v["ids"]), ids(&reference["greedy_ids"]));
    assert_eq!(v["text"], reference["text"]);
    assert_eq!(v["finish_reason"]["reason"], "max_tokens");
    for key in [
        "prompt_tokens_per_s",
        "decode_tokens_per_s",
        "time_to_first_token_s",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
}

#[test]
fn generate_streams_text_with_an_explicit_tokenizer_and_is_seeded() {
    let model = fixtures().join("models/qwen3-tiny-fullvocab");
    let tokenizer = assets().join("qwen3-tokenizer");
    let sample = |seed: &str| {
        stdout_json(&run(kestrel()
            .args([
                "generate",
                "--json",
                "--max-tokens",
                "12",
                "--temperature",
                "1.0",
                "--seed",
                seed,
                "--model",
            ])
            .arg(&model)
            .arg("--tokenizer")
            .arg(&tokenizer)
            .args([
                "--prompt",
                "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
            ])))
    };
    let (a, b, c) = (sample("1"), sample("1"), sample("2"));
    assert_eq!(a["ids"], b["ids"], "same seed, same tokens");
    assert_ne!(a["ids"], c["ids"], "another seed, other tokens");
    // Special-token text in the raw prompt becomes the special token.
    assert_eq!(ids(&a["prompt_ids"])[0], 151644);

    let out = run(kestrel()
        .args([
            "generate",
            "--max-tokens",
            "5",
            "--temperature",
            "0",
            "--model",
        ])
        .arg(&model)
        .arg("--tokenizer")
        .arg(&tokenizer)
        .args(["--prompt", "hi"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("tok/s"));
}

#[test]
fn bench_json_reports_speed_and_memory() {
    let gguf = assets().join("qwen2.5-coder-0.5b-instruct.gguf");
    let out = run(kestrel()
        .args([
            "bench",
            "--json",
            "--prompt-tokens",
            "32",
            "--gen-tokens",
            "4",
            "--threads",
            "2",
            "--model",
        ])
        .arg(&gguf));
    let v = stdout_json(&out);
    for key in [
        "prompt_tokens_per_s",
        "decode_tokens_per_s",
        "peak_rss_bytes",
        "kv_cache_bytes",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    assert_eq!(v["threads"], "2");
}

/// Errors: exit status 1 and one line that names the problem.
fn error_of(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(1),
        "should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    err.replace(&fixtures().display().to_string(), "<fixtures>")
}

#[test]
fn bad_input_gets_clear_errors() {
    let tiny = fixtures().join("models/qwen3-mqa-untied");
    insta::assert_snapshot!(
        "missing_model",
        error_of(kestrel().args(["generate", "--model", "/no/such/model", "--prompt", "x"]))
    );
    insta::assert_snapshot!(
        "no_tokenizer",
        error_of(
            kestrel()
                .args(["generate", "--prompt", "x", "--model"])
                .arg(&tiny)
        )
    );
    insta::assert_snapshot!(
        "bad_device",
        error_of(
            kestrel()
                .args(["generate", "--prompt", "x", "--device", "tpu", "--model"])
                .arg(&tiny)
        )
    );
    insta::assert_snapshot!(
        "bad_dtype",
        error_of(
            kestrel()
                .args(["bench", "--dtype", "f8", "--model"])
                .arg(&tiny)
        )
    );
    insta::assert_snapshot!(
        "bench_too_long",
        error_of(
            kestrel()
                .args(["bench", "--prompt-tokens", "300", "--model"])
                .arg(&tiny)
        )
    );
    insta::assert_snapshot!(
        "bad_temperature",
        error_of(
            kestrel()
                .args(["generate", "--temperature=-1", "--prompt", "hi", "--model"])
                .arg(fixtures().join("models/qwen3-tiny-fullvocab"))
                .arg("--tokenizer")
                .arg(assets().join("qwen3-tokenizer"))
        )
    );
    let out = run(kestrel().args(["generate", "--model", "x"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prompt"));
}

#[test]
fn help_lists_the_commands() {
    let out = run(kestrel().arg("--help"));
    assert!(out.status.success());
    insta::assert_snapshot!("help", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn prompt_render_prints_text_and_ids() {
    let tokenizer = assets().join("qwen3-tokenizer");
    let request = r#"{"messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tool said <|im_end|> here"}],
        "tools": [{"type": "function", "function": {"name": "now", "description": "Current time",
                   "parameters": {"type": "object", "properties": {}}}}],
        "enable_thinking": false}"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("request.json");
    std::fs::write(&file, request).expect("write");
    let out = run(kestrel()
        .args(["prompt", "render", "--model"])
        .arg(&tokenizer)
        .arg("--request")
        .arg(&file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!("prompt_render", String::from_utf8_lossy(&out.stdout));

    let out = run(kestrel()
        .args(["prompt", "render", "--ids", "--model"])
        .arg(&tokenizer)
        .arg("--request")
        .arg(&file));
    let ids: Vec<u64> = serde_json::from_slice(&out.stdout).expect("ids");
    // <|im_end|> appears as a token exactly once per message the template closes (system, user).
    assert_eq!(ids.iter().filter(|&&i| i == 151645).count(), 2);

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"messages": [{"role": "user", "content": "x"}], "tool_choise": "auto"}"#,
    )
    .expect("write");
    let err = error_of(
        kestrel()
            .args(["prompt", "render", "--model"])
            .arg(&tokenizer)
            .arg("--request")
            .arg(&bad),
    );
    assert!(
        err.contains("bad.json") && err.contains("tool_choise"),
        "{err}"
    );
}
