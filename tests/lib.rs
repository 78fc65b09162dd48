//! Helpers shared by the cross-crate and end-to-end tests in `tests/tests/`.

use std::path::PathBuf;

/// `tests/fixtures`: the committed tiny checkpoints and reference outputs.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The directory `scripts/fetch-assets` fills (`$KESTREL_ASSETS`, default
/// `${XDG_CACHE_HOME:-~/.cache}/kestrel/assets`). Tests that need it fail, naming the script, when
/// it is missing: an asset test never skips silently.
pub fn assets() -> PathBuf {
    let dir = std::env::var_os("KESTREL_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                });
            cache.join("kestrel/assets")
        });
    assert!(
        dir.is_dir(),
        "test assets missing at {}: run scripts/fetch-assets",
        dir.display()
    );
    dir
}

/// The real Qwen2.5-Coder-0.5B-Instruct GGUF.
pub fn coder_gguf() -> PathBuf {
    let p = assets().join("qwen2.5-coder-0.5b-instruct.gguf");
    assert!(
        p.is_file(),
        "{} missing: run scripts/fetch-assets",
        p.display()
    );
    p
}

/// The real Qwen3 tokenizer directory (tokenizer.json + tokenizer_config.json).
pub fn qwen3_tokenizer() -> PathBuf {
    let p = assets().join("qwen3-tokenizer");
    assert!(
        p.join("tokenizer.json").is_file(),
        "{} missing: run scripts/fetch-assets",
        p.display()
    );
    p
}

/// Reads a JSON file, panicking with its path.
pub fn json(path: PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of integers as token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
