//! End-to-end: the `kestrel` binary on real models (the Qwen2.5-Coder GGUF, a tiny Qwen3 driven by
//! the real Qwen3 tokenizer), its JSON output, and its errors on bad input.

use kestrel_tests::{assets, fixtures, hf_cache, kestrel};
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

#[test]
fn bench_runs_sequences_together() {
    let tiny = fixtures().join("models/qwen3-tiny-fullvocab");
    let out = run(kestrel()
        .args(["bench", "--json", "--batch", "3", "--prompt-tokens", "300"])
        .args(["--gen-tokens", "4", "--threads", "2", "--model"])
        .arg(&tiny));
    let v = stdout_json(&out);
    assert_eq!(v["batch"], 3);
    for key in ["prompt_tokens_per_s", "decode_tokens_per_s"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    // Three caches of 304 positions: two pages of 256 each, per layer (2 layers), f16 keys and
    // values of one kv head of 16.
    assert_eq!(v["kv_cache_bytes"], 3 * 2 * 2 * (2 * 256 * 16 * 2));
    let out = run(kestrel()
        .args(["bench", "--batch", "0", "--model"])
        .arg(&tiny));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch"));
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
    // A value outside a fixed set is a usage error, answered by the argument parser (status 2)
    // with the values it takes.
    let out = run(kestrel()
        .args(["bench", "--cpu-ops", "gpu", "--model"])
        .arg(&tiny));
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!("bad_cpu_ops", String::from_utf8_lossy(&out.stderr));
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

#[test]
fn models_are_taken_from_the_hugging_face_cache_by_repo_id() {
    let home = tempfile::tempdir().expect("tmp");
    let tiny = fixtures().join("models/qwen3-tiny-fullvocab");
    let tokenizer = assets().join("qwen3-tokenizer");
    hf_cache(
        home.path(),
        "kestrel-test/tiny-qwen3",
        &[
            ("config.json", tiny.join("config.json")),
            (
                "generation_config.json",
                tiny.join("generation_config.json"),
            ),
            ("model.safetensors", tiny.join("model.safetensors")),
            ("tokenizer.json", tokenizer.join("tokenizer.json")),
            (
                "tokenizer_config.json",
                tokenizer.join("tokenizer_config.json"),
            ),
        ],
    );
    hf_cache(
        home.path(),
        "kestrel-test/coder-GGUF",
        &[(
            "coder-0.5b-Q5_0.gguf",
            assets().join("qwen2.5-coder-0.5b-instruct.gguf"),
        )],
    );
    // Nothing listens on the endpoint: whatever is used must come from the cache.
    let offline = |cmd: &mut Command| {
        cmd.env("HF_HOME", home.path())
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env_remove("HF_TOKEN");
    };
    let generate = |model: &str, extra: &[&str]| {
        let mut cmd = kestrel();
        cmd.args([
            "generate",
            "--json",
            "--temperature",
            "0",
            "--max-tokens",
            "4",
        ])
        .args(["--prompt", "Hello", "--model", model])
        .args(extra);
        offline(&mut cmd);
        run(&mut cmd)
    };
    let by_id = stdout_json(&generate("kestrel-test/tiny-qwen3", &[]));
    let by_path = stdout_json(&run(kestrel()
        .args([
            "generate",
            "--json",
            "--temperature",
            "0",
            "--max-tokens",
            "4",
        ])
        .args(["--prompt", "Hello", "--model"])
        .arg(&tiny)
        .arg("--tokenizer")
        .arg(&tokenizer)));
    assert_eq!(by_id["ids"], by_path["ids"]);
    for spec in [
        "kestrel-test/coder-GGUF:q5_0",
        "kestrel-test/coder-GGUF/coder-0.5b-Q5_0.gguf",
    ] {
        let v = stdout_json(&generate(spec, &[]));
        assert_eq!(v["ids"].as_array().map(Vec::len), Some(4), "{spec}");
    }

    let failure = |spec: &str| {
        let out = generate(spec, &[]);
        assert_eq!(out.status.code(), Some(1), "{spec} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let absent = failure("kestrel-test/absent");
    assert!(
        absent.contains("kestrel-test/absent: config.json is not in the Hugging Face cache")
            && absent.contains(&home.path().join("hub").display().to_string()),
        "{absent}"
    );
    let no_quant = failure("kestrel-test/coder-GGUF:Q2_K");
    assert!(
        no_quant.contains("has no GGUF file matching \"Q2_K\" (it has: coder-0.5b-Q5_0.gguf)"),
        "{no_quant}"
    );
    let not_an_id = failure("no-such-model");
    assert!(
        not_an_id.contains("not a Hugging Face repo id"),
        "{not_an_id}"
    );
}

#[test]
fn bench_runs_synthetic_weights_of_a_configuration_and_reports_the_roofline() {
    let config = fixtures().join("models/qwen3-gqa-headdim-tied/config.json");
    // Kestrel's CPU kernels, and candle's ops alone (the code a GPU runs, what scripts/bench-gpu's
    // dry run takes).
    let cases = [None, Some("q8_0")]
        .into_iter()
        .flat_map(|q| ["kestrel", "candle"].map(|ops| (q, ops)));
    for (quant, ops) in cases {
        let mut cmd = kestrel();
        cmd.args([
            "bench",
            "--json",
            "--roofline",
            "--device",
            "cpu",
            "--cpu-ops",
            ops,
            "--synthetic",
        ])
        .arg(&config)
        .args(["--prompt-tokens", "32", "--gen-tokens", "4"]);
        if let Some(q) = quant {
            cmd.args(["--quant", q]);
        }
        let v = stdout_json(&run(&mut cmd));
        assert_eq!(v["synthetic"], true, "{v}");
        assert_eq!(v["ops"], ops, "{v}");
        let format = v["format"].as_str().unwrap_or("");
        assert!(
            format.contains(if quant.is_some() { "Q8_0" } else { "F32" }),
            "{v}"
        );
        let r = &v["roofline"];
        for key in [
            "copy_bytes_per_s",
            "matmul_flops_per_s",
            "decode_bytes_per_token",
            "decode_bandwidth_share",
            "prefill_flops_per_token",
            "prefill_matmul_share",
        ] {
            assert!(
                r[key].as_f64().is_some_and(|x| x > 0.0 && x.is_finite()),
                "{key}: {v}"
            );
        }
        // Decode reads at least the weights the model holds, minus the untouched embedding rows.
        assert!(
            r["decode_bytes_per_token"].as_f64() >= v["weight_bytes"].as_f64().map(|w| w * 0.5)
        );
    }
    let err = error_of(
        kestrel()
            .args(["bench", "--quant", "q3", "--synthetic"])
            .arg(&config),
    );
    assert!(err.contains("--quant \"q3\": expected"), "{err}");
    let err = error_of(kestrel().args(["bench", "--quant", "q8_0", "--model", "x"]));
    assert!(
        err.contains("--quant applies to --synthetic models only"),
        "{err}"
    );
}

/// Warnings show without any log setting (a setting ignored must not pass silently), and a log
/// filter that does not parse is itself reported.
#[test]
fn warnings_show_by_default() {
    let config = fixtures().join("models/qwen3-gqa-headdim-tied/config.json");
    let bench = |kernel: Option<&str>, log: Option<&str>| {
        let mut cmd = kestrel();
        cmd.args(["bench", "--device", "cpu", "--quant", "q8_0", "--synthetic"])
            .arg(&config)
            .args(["--prompt-tokens", "4", "--gen-tokens", "1"])
            .env_remove("KESTREL_LOG")
            .env_remove("KESTREL_KERNEL");
        if let Some(kernel) = kernel {
            cmd.env("KESTREL_KERNEL", kernel);
        }
        if let Some(log) = log {
            cmd.env("KESTREL_LOG", log);
        }
        let out = run(&mut cmd);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = bench(Some("avx9"), None);
    assert!(
        err.contains("WARN") && err.contains("KESTREL_KERNEL: unknown value `avx9`"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "no colours off a terminal: {err:?}");
    let err = bench(Some("avx9"), Some("error"));
    assert!(!err.contains("KESTREL_KERNEL"), "{err}");
    let err = bench(None, Some("kestrel=loud"));
    assert!(
        err.contains("KESTREL_LOG=\"kestrel=loud\" is not a log filter"),
        "{err}"
    );
}

/// Qwen3-14B's config.json (the planner reads nothing else of a safetensors model).
fn qwen3_14b_config(dir: &std::path::Path) {
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type":"qwen3","vocab_size":151936,"hidden_size":5120,
            "intermediate_size":17408,"num_hidden_layers":40,"num_attention_heads":40,
            "num_key_value_heads":8,"head_dim":128,"max_position_embeddings":40960,
            "rope_theta":1000000.0,"tie_word_embeddings":false,"torch_dtype":"bfloat16"}"#,
    )
    .expect("config");
}

/// Qwen3-30B-A3B's config: 30.5B parameters, 3.3B of them read per token (Qwen's model card).
#[test]
fn plan_counts_a_mixture_of_experts_total_and_active_parameters() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"model_type":"qwen3_moe","vocab_size":151936,"hidden_size":2048,
            "intermediate_size":6144,"moe_intermediate_size":768,"num_experts":128,
            "num_experts_per_tok":8,"norm_topk_prob":true,"decoder_sparse_step":1,
            "mlp_only_layers":[],"num_hidden_layers":48,"num_attention_heads":32,
            "num_key_value_heads":4,"head_dim":128,"max_position_embeddings":40960,
            "rope_theta":1000000.0,"tie_word_embeddings":false,"torch_dtype":"bfloat16"}"#,
    )
    .expect("config");
    let out = run(kestrel()
        .args([
            "plan", "--json", "--device", "cpu", "--dtype", "bf16", "--model",
        ])
        .arg(tmp.path()));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let billions = |key: &str| v[key].as_u64().expect(key) as f64 / 1e9;
    assert!((30.4..30.6).contains(&billions("parameters")), "{v}");
    assert!((3.3..3.4).contains(&billions("active_parameters")), "{v}");
    let out = run(kestrel()
        .args(["plan", "--device", "cpu", "--dtype", "bf16", "--model"])
        .arg(tmp.path()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("params    30.53 B (3.35 B active per token)"),
        "{text}"
    );
}

#[test]
fn plan_gives_qwen3_14b_kv_arithmetic_from_the_config_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    qwen3_14b_config(tmp.path());
    let out = run(kestrel()
        .args(["plan", "--json", "--device", "cpu", "--dtype", "bf16"])
        .args(["--kv-type", "bf16", "--ctx-size", "32768", "--model"])
        .arg(tmp.path()));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["kv_bytes_per_token"], 160 * 1024);
    assert_eq!(v["kv_bytes"], 5u64 << 30);
    assert_eq!(v["context"], 32768);
    // 14.77 billion bf16 parameters.
    let weights = v["weight_bytes"].as_u64().expect("weights");
    assert!(
        (29_400_000_000..29_600_000_000).contains(&weights),
        "{weights}"
    );
    let fits = v["fits"].as_bool().expect("known on Linux");
    assert_eq!(out.status.code(), Some(if fits { 0 } else { 1 }));

    // The text view, four batched sequences in q8_0 at the YaRN-extended 131k.
    let out = run(kestrel()
        .args(["plan", "--device", "cpu", "--dtype", "bf16", "--batch", "4"])
        .args([
            "--kv-type",
            "q8_0",
            "--ctx-size",
            "131072",
            "--rope-scaling",
            "yarn",
        ])
        .args([
            "--rope-factor",
            "4",
            "--rope-original-ctx",
            "32768",
            "--model",
        ])
        .arg(tmp.path()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("KV cache  85 KiB/token (q8_0) x 131072 tokens x 4 sequences = 42.5 GiB"),
        "{text}"
    );

    // Past the window without YaRN: refused, saying how to get there.
    let out = run(kestrel()
        .args(["plan", "--device", "cpu", "--ctx-size", "131072", "--model"])
        .arg(tmp.path()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("131072") && err.contains("40960") && err.contains("YaRN"),
        "{err}"
    );

    // Flags that make no sense alone, and an unknown cache type.
    let out = run(kestrel()
        .args(["plan", "--rope-factor", "4", "--model"])
        .arg(tmp.path()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rope-scaling"));
    let out = run(kestrel()
        .args(["plan", "--kv-type", "int4", "--model"])
        .arg(tmp.path()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("\"int4\""), "{err}");
}

#[test]
fn a_prompt_past_ctx_size_is_refused_by_generate() {
    let gguf = assets().join("qwen2.5-coder-0.5b-instruct.gguf");
    let out = run(kestrel()
        .args([
            "generate",
            "--device",
            "cpu",
            "--ctx-size",
            "4",
            "--max-tokens",
            "2",
        ])
        .args(["--prompt", "one two three four five six seven", "--model"])
        .arg(&gguf));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("context window of 4 tokens"), "{err}");
}

/// scripts/bench-gpu's dry run on the CPU (candle's ops, the code a GPU runs), small shapes: every
/// part of the device script runs: the logits of the tiny checkpoints within its bounds, the plan
/// and the batched decode.
#[test]
fn the_gpu_benchmark_script_dry_runs_on_the_cpu() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = kestrel().get_program().to_owned();
    let out = Command::new("bash")
        .arg(root.join("scripts/bench-gpu"))
        .arg(&binary)
        .envs([
            ("KESTREL_DEVICE", "cpu"),
            ("KESTREL_BENCH_SHAPE", "small"),
            ("KESTREL_BENCH_REPS", "1"),
            ("KESTREL_BENCH_QUANTS", "none"),
            ("KESTREL_LOG", "off"),
        ])
        .env("KESTREL_FIXTURES", fixtures().join("models"))
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "qwen3-mqa-untied         bf16  vs cpu",
        "greedy tokens equal: 24/24",
        "decode       ",
        "KV cache  2 KiB/token (f16) x 32768 tokens x 1 sequence = 64 MiB",
        "batch        4 sequences",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
}
