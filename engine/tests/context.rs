//! Context windows: YaRN switched on by options (checked against transformers on the tiny YaRN
//! checkpoint with its scaling removed from config.json), a context asked for that the memory
//! plan refuses with its arithmetic, a smaller context enforced, and chunked prefill giving the
//! logits of a single pass.

use kestrel_tests as common;

use std::path::PathBuf;
use std::sync::Arc;

use kestrel_engine::{
    EngineError, KvType, LoadOptions, LogitsFor, Model, Session, Yarn, plan::PREFILL_CHUNK,
};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn reference_logits(dir: &std::path::Path) -> Vec<f32> {
    std::fs::read(dir.join("logits.f32"))
        .expect("logits.f32")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The YaRN checkpoint's config without its rope scaling (and with the original 32-position
/// window): the model transformers ran, minus the switch the options put back.
fn yarn_removed() -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = common::copy_fixture("qwen3-yarn");
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    let object = config.as_object_mut().expect("object");
    let theta = object["rope_parameters"]["rope_theta"].clone();
    object.remove("rope_parameters");
    object.remove("rope_scaling");
    object.insert("rope_theta".into(), theta);
    object.insert("max_position_embeddings".into(), 32.into());
    std::fs::write(&path, config.to_string()).expect("write");
    (tmp, dir)
}

#[test]
fn yarn_from_the_options_matches_transformers() {
    let (_tmp, dir) = yarn_removed();
    let reference_dir = common::fixtures().join("models/qwen3-yarn");
    let reference = common::json(reference_dir.join("reference.json"));
    let prompt = common::ids(&reference["prompt_ids"]);
    assert!(
        prompt.len() > 32,
        "the prompt goes past the original window"
    );

    // Without YaRN the 32-position window refuses the 48-token prompt.
    let plain = Arc::new(Model::load(&dir, &LoadOptions::default()).expect("load"));
    assert_eq!(plain.context(), 32);
    let err = Session::new(plain).prefill(&prompt).expect_err("too long");
    assert!(matches!(err, EngineError::ContextOverflow { .. }), "{err}");

    // Factor 4 over the original 32 positions (0: the model's own window) gives 128.
    for original in [32, 0] {
        let options = LoadOptions {
            yarn: Some(Yarn::new(4.0, original, None)),
            kv_type: Some(KvType::F32),
            ..LoadOptions::default()
        };
        let model = Arc::new(Model::load(&dir, &options).expect("load"));
        assert_eq!(model.context(), 128);
        let (logits, _) = Session::new(model).prefill(&prompt).expect("prefill");
        let diff = max_abs_diff(&logits, &reference_logits(&reference_dir));
        assert!(
            diff < 1e-4,
            "original {original}: max abs logit difference {diff}"
        );
    }

    // A factor below 1 is refused by name.
    let options = LoadOptions {
        yarn: Some(Yarn::new(0.5, 32, None)),
        ..LoadOptions::default()
    };
    let err = Model::load(&dir, &options)
        .expect_err("bad factor")
        .to_string();
    assert!(err.contains("factor") && err.contains("0.5"), "{err}");
}

#[test]
fn a_context_is_enforced_and_one_that_cannot_fit_is_refused_with_the_arithmetic() {
    let dir = common::fixtures().join("models/qwen3-yarn");
    let options = LoadOptions {
        context: Some(40),
        ..LoadOptions::default()
    };
    let model = Arc::new(Model::load(&dir, &options).expect("load"));
    assert_eq!(model.context(), 40);
    assert_eq!(model.qwen().new_cache().max_len(), 40);
    let err = Session::new(model).prefill(&[3; 41]).expect_err("41 > 40");
    assert!(
        err.to_string().contains("41") && err.to_string().contains("40"),
        "{err}"
    );

    // Longer than the window.
    let options = LoadOptions {
        context: Some(129),
        ..LoadOptions::default()
    };
    let err = Model::load(&dir, &options)
        .expect_err("129 > 128")
        .to_string();
    assert!(err.contains("129") && err.contains("128"), "{err}");

    // Ten million sequences of 128 positions: 512 bytes per token (2 x 2 layers x 2 kv heads x
    // 16 x f32) x 128 x 10^7 = 610 GiB of KV, more than any test machine has.
    let options = LoadOptions {
        context: Some(128),
        sequences: 10_000_000,
        kv_type: Some(KvType::F32),
        ..LoadOptions::default()
    };
    let err = Model::load(&dir, &options)
        .expect_err("too big")
        .to_string();
    assert!(
        err.contains("does not fit")
            && err.contains("512 B/token (f32) x 128 tokens x 10000000 sequences = 610.4 GiB"),
        "{err}"
    );
    // The planner says the same without loading.
    let plan = Model::plan(&dir, &options).expect("plan");
    assert_eq!(plan.fits(), Some(false));
    assert_eq!(plan.kv_bytes_per_token, 512);
    assert!(err.contains(&plan.arithmetic()), "{err}");
}

#[test]
fn chunked_prefill_gives_the_logits_of_one_pass() {
    let dir = common::fixtures().join("models/qwen3-tiny-fullvocab");
    let model = Arc::new(Model::load(&dir, &LoadOptions::default()).expect("load"));
    let prompt: Vec<u32> = (0..PREFILL_CHUNK as u32 * 2 + 37)
        .map(|i| (i * 7919) % 151_000)
        .collect();
    let mut cache = model.qwen().new_cache();
    let whole: Vec<f32> = model
        .qwen()
        .forward(&prompt, &mut cache, LogitsFor::Last)
        .expect("one pass")
        .to_vec1()
        .expect("vec");
    let mut session = Session::new(model);
    let (chunked, _) = session.prefill(&prompt).expect("chunked");
    assert_eq!(session.cache().len(), prompt.len());
    let diff = max_abs_diff(&whole, &chunked);
    assert!(diff < 1e-4, "chunked vs one pass: {diff}");
}
