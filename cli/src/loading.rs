//! Turning `ModelArgs` into a loaded model: where it comes from (a path or the Hugging Face
//! cache, see [`crate::hub`]), device, dtype, threads.
//!
//! The thread count must reach candle before its worker pools start, which happens on the first
//! tensor operation; so it is applied here, before anything is loaded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::bail;
use kestrel::backend::{
    Backend, ChatEngine, Embedded, EngineInfo, Remote, RemoteError, RemoteOptions,
};
use kestrel_engine::{
    DType, EngineOptions, GgmlDType, KvType, LoadOptions, Model, ModelConfig, Tokenizer, Yarn,
    parse_device,
};

use crate::args::{ContextArgs, EngineArgs, EngineMode, ModelArgs, RopeScalingArg};
use crate::hub::{ModelSpec, default_model, resolve, resolve_tokenizer};

/// Applies `--threads`, resolves the device and dtype, and loads the model for one sequence.
pub fn load_model(args: &ModelArgs) -> anyhow::Result<Arc<Model>> {
    load_model_for(args, 1)
}

/// The backend to generate with: the engine of `--engine` when given (its own batching does the
/// work), otherwise the embedded engine over the model, loaded for `sequences` held at once and
/// batching up to that many generations (and a server's sampling requests) together.
pub fn start_engine(
    args: &ModelArgs,
    engine: &EngineArgs,
    sequences: usize,
) -> anyhow::Result<Arc<dyn Backend>> {
    if let Some(url) = &engine.engine {
        return connect_engine(args, engine, url);
    }
    let model = load_model_for(args, sequences)?;
    let options = EngineOptions {
        max_sequences: sequences.max(1) + 1,
        ..EngineOptions::default()
    };
    Ok(Arc::new(Embedded::start(model, options)?))
}

/// Connects to the engine at `url` with `--model`'s tokenizer, in the mode `--engine-mode`
/// asks for, and says what it found.
pub fn connect_engine(
    args: &ModelArgs,
    engine: &EngineArgs,
    url: &str,
) -> anyhow::Result<Arc<dyn Backend>> {
    let timeout = engine.engine_timeout;
    if !(timeout > 0.0 && timeout.is_finite()) {
        bail!("--engine-timeout must be a positive number of seconds, got {timeout}");
    }
    let tokenizer = load_tokenizer(args)?;
    let options = RemoteOptions {
        api_key: engine.engine_key.clone().filter(|k| !k.is_empty()),
        model: engine.engine_model.clone(),
        idle_timeout: Duration::from_secs_f64(timeout),
        ..RemoteOptions::new(url)
    };
    let chat = |tokenizer, options| -> anyhow::Result<(Arc<dyn Backend>, EngineInfo)> {
        let engine = ChatEngine::connect(tokenizer, options)?;
        let info = engine.info();
        Ok((Arc::new(engine), info))
    };
    let (backend, info) = match engine.engine_mode {
        EngineMode::Chat => chat(tokenizer, options)?,
        EngineMode::Token => {
            let remote = Remote::connect(tokenizer, options)?;
            let info = remote.info();
            (Arc::new(remote) as Arc<dyn Backend>, info)
        }
        EngineMode::Auto => match Remote::connect(tokenizer.clone(), options.clone()) {
            Ok(remote) => {
                let info = remote.info();
                (Arc::new(remote) as Arc<dyn Backend>, info)
            }
            Err(RemoteError::Unsupported { found, .. }) => {
                eprintln!(
                    "engine: {url} cannot be driven in token mode ({found}); using chat mode (--engine-mode chat)"
                );
                chat(tokenizer, options)?
            }
            Err(e) => return Err(e.into()),
        },
    };
    let shape = match info.slots {
        0 => format!("{} positions per sequence", info.context),
        slots => format!("{} positions per sequence, {slots} at once", info.context),
    };
    eprintln!(
        "engine: {} at {} ({} mode), serving {} ({shape}{}); thinking budget: {}; tool calls: {}",
        info.kind,
        info.url,
        info.mode,
        info.model,
        info.build
            .as_deref()
            .map(|b| format!(", build {b}"))
            .unwrap_or_default(),
        info.thinking_budget,
        info.tool_calls
    );
    Ok(backend)
}

/// `--model`'s tokenizer alone (or `--tokenizer`'s): a model directory's tokenizer.json or a
/// GGUF's header; no weights are read.
pub fn load_tokenizer(args: &ModelArgs) -> anyhow::Result<Tokenizer> {
    if let Some(path) = &args.tokenizer {
        return Ok(if path.file_name() == Some("tokenizer.json".as_ref()) {
            Tokenizer::from_dir(path.parent().unwrap_or(Path::new(".")))?
        } else {
            Tokenizer::load(path)?
        });
    }
    let Some(model) = args.model.as_deref() else {
        bail!(
            "--engine needs --model (the model the engine serves, for its tokenizer) or --tokenizer"
        );
    };
    let path = resolve_tokenizer(&ModelSpec::parse(model)?)?;
    Ok(Tokenizer::load(&path)?)
}

/// [`load_model`] for `sequences` held at once (their KV caches count in the memory plan).
pub fn load_model_for(args: &ModelArgs, sequences: usize) -> anyhow::Result<Arc<Model>> {
    let mut options = load_options(args)?;
    options.sequences = sequences;
    let path = model_path(args.model.as_deref(), !options.device.is_cpu())?;
    let model = Model::load(&path, &options)?;
    Ok(Arc::new(model))
}

/// A model of the shapes in `config` (an HF config.json) with random weights made on the device,
/// its matrices quantized to `quant` when given.
pub fn load_synthetic(
    args: &ModelArgs,
    config: &Path,
    quant: Option<&str>,
) -> anyhow::Result<Arc<Model>> {
    let options = load_options(args)?;
    let config = ModelConfig::from_hf_file(config)?;
    let quant = quant.map(parse_quant).transpose()?;
    Ok(Arc::new(Model::synthetic(&config, &options, quant)?))
}

fn parse_quant(text: &str) -> anyhow::Result<GgmlDType> {
    Ok(match text.to_ascii_lowercase().replace('_', "").as_str() {
        "q40" => GgmlDType::Q4_0,
        "q50" => GgmlDType::Q5_0,
        "q80" => GgmlDType::Q8_0,
        "q2k" => GgmlDType::Q2K,
        "q3k" => GgmlDType::Q3K,
        "q4k" => GgmlDType::Q4K,
        "q5k" => GgmlDType::Q5K,
        "q6k" => GgmlDType::Q6K,
        _ => bail!("--quant {text:?}: expected q4_0, q5_0, q8_0, q2_k, q3_k, q4_k, q5_k or q6_k"),
    })
}

fn load_options(args: &ModelArgs) -> anyhow::Result<LoadOptions> {
    if let Some(n) = args.threads {
        set_threads(n)?;
    }
    let device = parse_device(&args.device)?;
    Ok(LoadOptions {
        device,
        dtype: parse_dtype(args.dtype.as_deref())?,
        tokenizer: args.tokenizer.clone(),
        cpu_ops: args.cpu_ops.into(),
        ..context_options(&args.context)?
    })
}

/// `--dtype`.
pub fn parse_dtype(text: Option<&str>) -> anyhow::Result<Option<DType>> {
    Ok(match text {
        None => None,
        Some("f32") => Some(DType::F32),
        Some("bf16") => Some(DType::BF16),
        Some("f16") => Some(DType::F16),
        Some(other) => bail!("--dtype {other:?}: expected f32, bf16 or f16"),
    })
}

/// `--ctx-size` and the RoPE scaling flags, as load options (the rest default).
pub fn context_options(args: &ContextArgs) -> anyhow::Result<LoadOptions> {
    let yarn = match args.rope_scaling {
        None => None,
        Some(RopeScalingArg::Yarn) => {
            let Some(factor) = args.rope_factor else {
                bail!("--rope-scaling yarn needs --rope-factor (Qwen's recipe: 4)");
            };
            if !(factor >= 1.0 && factor.is_finite()) {
                bail!("--rope-factor {factor}: expected a number of at least 1");
            }
            // Without --rope-original-ctx, the loader keeps the model's window as the original
            // (0 here is replaced there).
            Some(Yarn::new(factor, args.rope_original_ctx.unwrap_or(0), None))
        }
    };
    if args.rope_original_ctx == Some(0) {
        bail!("--rope-original-ctx must be at least 1");
    }
    Ok(LoadOptions {
        context: args.ctx_size,
        kv_type: args
            .kv_type
            .as_deref()
            .map(str::parse::<KvType>)
            .transpose()?,
        yarn,
        ..LoadOptions::default()
    })
}

/// The local path of `--model` (or of the machine's default model), fetched when needed.
pub fn model_path(model: Option<&str>, gpu: bool) -> anyhow::Result<PathBuf> {
    let spec = match model {
        Some(text) => ModelSpec::parse(text)?,
        None => {
            let (id, why) = default_model(gpu);
            eprintln!("note: no --model given; using {id} ({why})");
            ModelSpec::parse(id)?
        }
    };
    Ok(resolve(&spec)?)
}

/// Sets the CPU worker count of candle's pool, which the engine's kernels share, and of rayon
/// (candle's f32 matmuls); both read the environment when they start.
pub fn set_threads(n: usize) -> anyhow::Result<()> {
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: called from the command's entry, before the model is loaded and before any
        // candle or rayon worker thread exists, so no other thread can read the environment
        // concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        }
    });
    Ok(())
}

/// Peak resident memory of this process in bytes (Linux), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
