//! Bad model files and requests: each a clear error that names the problem, never a panic.

use kestrel_tests as common;

use std::path::Path;
use std::sync::Arc;

use kestrel_engine::{EngineError, GenerateRequest, LoadOptions, Model, SamplingParams, Session};

fn load_err(path: &Path) -> String {
    match Model::load(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of a fixture model in a temp dir, to break.

#[test]
fn missing_path() {
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(
        e.contains("/nonexistent/model") && e.contains("No such file"),
        "{e}"
    );
}

#[test]
fn directory_without_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let e = load_err(tmp.path());
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn truncated_safetensors() {
    let (_tmp, dir) = common::copy_fixture("qwen3-mqa-untied");
    let file = dir.join("model.safetensors");
    let len = std::fs::metadata(&file).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
    let e = load_err(&dir);
    assert!(e.contains("safetensors"), "{e}");
}

#[test]
fn missing_shard() {
    let (_tmp, dir) = common::copy_fixture("qwen3-gqa-headdim-tied");
    std::fs::remove_file(dir.join("model-00003-of-00007.safetensors")).expect("rm");
    let e = load_err(&dir);
    assert!(e.contains("model-00003-of-00007.safetensors"), "{e}");
}

#[test]
fn unknown_architecture_and_missing_fields() {
    let (_tmp, dir) = common::copy_fixture("qwen3-mqa-untied");
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, text.replace("\"qwen3\"", "\"mamba\"")).expect("write");
    let e = load_err(&dir);
    assert!(e.contains("mamba") && e.contains("config.json"), "{e}");

    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    json.as_object_mut()
        .expect("object")
        .remove("num_hidden_layers");
    std::fs::write(&config, json.to_string()).expect("write");
    let e = load_err(&dir);
    assert!(e.contains("num_hidden_layers"), "{e}");

    std::fs::write(&config, "{\"model_type\": \"qwen3\", ").expect("write");
    let e = load_err(&dir);
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn tensor_missing_from_checkpoint() {
    let (_tmp, dir) = common::copy_fixture("qwen3-mqa-untied");
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).expect("read");
    // One more layer than the weights hold.
    std::fs::write(
        &config,
        text.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4"),
    )
    .expect("write");
    let e = load_err(&dir);
    assert!(e.contains("model.layers.3."), "{e}");
}

#[test]
fn corrupt_and_truncated_gguf() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file at all").expect("write");
    let e = load_err(&junk);
    assert!(e.contains("junk.gguf") && e.contains("GGUF"), "{e}");

    // The real file cut in the middle of its tensor data.
    let real = std::fs::read(common::coder_gguf()).expect("gguf");
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &real[..real.len() / 3]).expect("write");
    let e = load_err(&cut);
    assert!(e.contains("cut.gguf") && e.contains("truncated"), "{e}");

    // Cut inside the header.
    let header = tmp.path().join("header.gguf");
    std::fs::write(&header, &real[..4096]).expect("write");
    let e = load_err(&header);
    assert!(e.contains("header.gguf"), "{e}");
}

#[test]
fn prompt_longer_than_the_context() {
    let (_tmp, dir) = common::copy_fixture("qwen3-yarn");
    let model = Arc::new(Model::load(&dir, &LoadOptions::default()).expect("load"));
    let context = model.config().max_position_embeddings;
    let mut session = Session::new(model);
    let request = GenerateRequest {
        prompt: vec![1; context + 1],
        max_tokens: 4,
        sampling: SamplingParams::greedy(),
        stop_ids: None,
    };
    let err = session
        .generate(request, None)
        .next()
        .expect("an item")
        .expect_err("too long");
    assert!(matches!(err, EngineError::ContextOverflow { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("{}", context + 1)),
        "{err}"
    );
}

#[test]
fn generation_stops_at_a_full_context_and_rejects_bad_ids() {
    let (_tmp, dir) = common::copy_fixture("qwen3-yarn");
    let model = Arc::new(Model::load(&dir, &LoadOptions::default()).expect("load"));
    let context = model.config().max_position_embeddings;
    let mut session = Session::new(model.clone());
    let request = GenerateRequest {
        prompt: vec![3; context - 2],
        max_tokens: 100,
        sampling: SamplingParams::greedy(),
        stop_ids: Some(vec![]),
    };
    let mut generation = session.generate(request, None);
    let tokens: Vec<_> = generation.by_ref().map(|t| t.expect("token")).collect();
    assert_eq!(tokens.len(), 2);
    assert_eq!(
        generation.finish_reason(),
        Some(kestrel_engine::FinishReason::ContextFull)
    );

    let request = GenerateRequest {
        prompt: vec![5, 99_999],
        max_tokens: 1,
        sampling: SamplingParams::greedy(),
        stop_ids: None,
    };
    let err = Session::new(model)
        .generate(request, None)
        .next()
        .expect("item")
        .expect_err("bad id");
    assert!(err.to_string().contains("99999"), "{err}");
}

#[test]
fn directory_without_tokenizer_says_so() {
    let (_tmp, dir) = common::copy_fixture("qwen3-mqa-untied");
    let model =
        Model::load(&dir, &LoadOptions::default()).expect("weights load without a tokenizer");
    let e = model
        .require_tokenizer()
        .expect_err("no tokenizer")
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}
