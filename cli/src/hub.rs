//! Where a model comes from: a local path, or a Hugging Face repository in the standard HF cache.
//!
//! `--model` takes a directory, a `.gguf` file, or a repo id: `Qwen/Qwen3-8B` (safetensors),
//! `Qwen/Qwen3-4B-GGUF/Qwen3-4B-Q4_K_M.gguf` (one GGUF file), or `Qwen/Qwen3-4B-GGUF:Q4_K_M` (the
//! repo's GGUF file with that quantization in its name). Files are looked up in the HF cache
//! (`$HF_HOME/hub`, else `~/.cache/huggingface/hub`) first, so a cached model needs no network at
//! all; only missing files are downloaded, with hf-hub, into that same cache with a progress bar.
//! `$HF_ENDPOINT` and `$HF_TOKEN` work as in other HF tools.
//!
//! With no `--model`, [`default_model`] picks one that fits the machine.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo};

/// What `--model` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A directory or file on disk.
    Local(PathBuf),
    /// A Hugging Face repository.
    Hub {
        /// `owner/name`.
        repo: String,
        /// Which GGUF: a file name, or `:QUANT` as a pattern; `None` for safetensors.
        gguf: Option<GgufChoice>,
    },
}

/// Which GGUF file of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufChoice {
    /// This file.
    File(String),
    /// The file whose name contains this quantization (case-insensitive), e.g. `Q4_K_M`.
    Quant(String),
}

/// Why a model could not be found or fetched.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Neither a path that exists nor a repo id.
    #[error(
        "--model {0:?}: no such file or directory, and not a Hugging Face repo id (owner/name, owner/name/FILE.gguf or owner/name:QUANT)"
    )]
    NotFound(String),
    /// A download failed (or the hub could not be reached) for a file not in the cache.
    #[error(
        "{repo}: {file} is not in the Hugging Face cache ({cache}) and could not be downloaded: {message}"
    )]
    Download {
        /// The repo.
        repo: String,
        /// The file.
        file: String,
        /// The cache directory.
        cache: String,
        /// What went wrong.
        message: String,
    },
    /// The repo has no GGUF file matching the choice.
    #[error("{repo} has no GGUF file matching {wanted:?} (it has: {available})")]
    NoGguf {
        /// The repo.
        repo: String,
        /// What was asked for.
        wanted: String,
        /// What it has.
        available: String,
    },
}

fn is_id_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['.', '-'])
        && !s.contains("..")
}

impl ModelSpec {
    /// Reads a `--model` value: an existing path wins; otherwise it must be a repo id.
    pub fn parse(text: &str) -> Result<Self, HubError> {
        let path = Path::new(text);
        if path.exists() {
            return Ok(Self::Local(path.to_path_buf()));
        }
        let not_found = || HubError::NotFound(text.to_string());
        if path.is_absolute() || text.starts_with('.') || text.starts_with('~') {
            return Err(not_found());
        }
        let (id, quant) = match text.split_once(':') {
            Some((id, q)) if is_id_part(q) => (id, Some(q)),
            Some(_) => return Err(not_found()),
            None => (text, None),
        };
        let parts: Vec<&str> = id.split('/').collect();
        if !parts.iter().all(|p| is_id_part(p)) {
            return Err(not_found());
        }
        let gguf = match (parts.len(), quant) {
            (2, None) => None,
            (2, Some(q)) => Some(GgufChoice::Quant(q.to_string())),
            (n, None) if n >= 3 && id.ends_with(".gguf") => {
                Some(GgufChoice::File(parts[2..].join("/")))
            }
            _ => return Err(not_found()),
        };
        Ok(Self::Hub {
            repo: format!("{}/{}", parts[0], parts[1]),
            gguf,
        })
    }
}

/// The model a machine gets without `--model`, and why.
pub fn default_model(gpu: bool) -> (&'static str, String) {
    if gpu {
        return (
            "Qwen/Qwen3-14B",
            "a GPU is available: Qwen3-14B in bf16".into(),
        );
    }
    let gib = total_memory_bytes().map(|b| b as f64 / (1u64 << 30) as f64);
    match gib {
        Some(g) if g < 8.0 => (
            "Qwen/Qwen3-1.7B-GGUF/Qwen3-1.7B-Q8_0.gguf",
            format!("CPU with {g:.0} GiB of memory: Qwen3-1.7B, Q8_0"),
        ),
        _ => (
            "Qwen/Qwen3-4B-GGUF/Qwen3-4B-Q4_K_M.gguf",
            "CPU: Qwen3-4B, Q4_K_M".into(),
        ),
    }
}

fn total_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Finds files of one repo in the cache, downloading what is missing.
struct Fetcher {
    repo: String,
    cache: Cache,
    api: Option<ApiRepo>,
}

impl Fetcher {
    fn new(repo: &str) -> Self {
        Self {
            repo: repo.to_string(),
            cache: Cache::from_env(),
            api: None,
        }
    }

    fn cached(&self, file: &str) -> Option<PathBuf> {
        self.cache.model(self.repo.clone()).get(file)
    }

    fn error(&self, file: &str, message: impl std::fmt::Display) -> HubError {
        HubError::Download {
            repo: self.repo.clone(),
            file: file.to_string(),
            cache: self.cache.path().display().to_string(),
            message: message.to_string(),
        }
    }

    fn api(&mut self, file: &str) -> Result<&ApiRepo, HubError> {
        if self.api.is_none() {
            let api = ApiBuilder::from_env()
                .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .build()
                .map_err(|e| self.error(file, e))?;
            self.api = Some(api.repo(Repo::model(self.repo.clone())));
        }
        self.api
            .as_ref()
            .ok_or_else(|| self.error(file, "no API client"))
    }

    /// The file's local path; `Ok(None)` when the repo does not have it.
    fn get(&mut self, file: &str, optional: bool) -> Result<Option<PathBuf>, HubError> {
        if let Some(path) = self.cached(file) {
            return Ok(Some(path));
        }
        match self.api(file)?.download(file) {
            Ok(path) => Ok(Some(path)),
            Err(e) if optional && e.to_string().contains("404") => Ok(None),
            Err(e) => Err(self.error(file, e)),
        }
    }

    /// File names in the repo: from the hub, else from the cached snapshot (offline).
    fn list(&mut self) -> Result<Vec<String>, HubError> {
        let remote = self.api("(file list)")?.info();
        match (remote, self.snapshot_dir()) {
            (Ok(info), _) => Ok(info.siblings.into_iter().map(|s| s.rfilename).collect()),
            (Err(_), Some(dir)) => Ok(std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()),
            (Err(e), None) => Err(self.error("(file list)", e)),
        }
    }

    /// The cached snapshot of the main branch, if any.
    fn snapshot_dir(&self) -> Option<PathBuf> {
        let repo_dir = self
            .cache
            .path()
            .join(format!("models--{}", self.repo.replace('/', "--")));
        let commit = std::fs::read_to_string(repo_dir.join("refs/main")).ok()?;
        let dir = repo_dir.join("snapshots").join(commit.trim());
        dir.is_dir().then_some(dir)
    }
}

/// The local path of the model `spec` names, fetching what the cache lacks.
pub fn resolve(spec: &ModelSpec) -> Result<PathBuf, HubError> {
    let (repo, gguf) = match spec {
        ModelSpec::Local(path) => return Ok(path.clone()),
        ModelSpec::Hub { repo, gguf } => (repo, gguf),
    };
    let mut fetcher = Fetcher::new(repo);
    match gguf {
        Some(GgufChoice::File(file)) => fetcher
            .get(file, false)?
            .ok_or_else(|| fetcher.error(file, "not found")),
        Some(GgufChoice::Quant(quant)) => {
            let files = fetcher.list()?;
            let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
            let wanted = quant.to_ascii_lowercase();
            let file = ggufs
                .iter()
                .find(|f| f.to_ascii_lowercase().contains(&wanted))
                .ok_or_else(|| HubError::NoGguf {
                    repo: repo.clone(),
                    wanted: quant.clone(),
                    available: ggufs
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?
                .to_string();
            fetcher
                .get(&file, false)?
                .ok_or_else(|| fetcher.error(&file, "not found"))
        }
        None => {
            let config = fetcher
                .get("config.json", false)?
                .ok_or_else(|| fetcher.error("config.json", "not found"))?;
            for file in [
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
            ] {
                fetcher.get(file, true)?;
            }
            // One file, or shards listed by an index; the cache is asked before the hub.
            if fetcher.cached("model.safetensors").is_none() {
                match fetcher.get("model.safetensors.index.json", true)? {
                    Some(index) => {
                        for shard in shard_names(&index)
                            .map_err(|e| fetcher.error("model.safetensors.index.json", e))?
                        {
                            fetcher.get(&shard, false)?;
                        }
                    }
                    None => {
                        fetcher.get("model.safetensors", false)?;
                    }
                }
            }
            config
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| fetcher.error("config.json", "no snapshot directory"))
        }
    }
}

/// What `--engine` needs of the model `spec` names: its tokenizer, fetching no weights. A local
/// path as it is; a safetensors repo's tokenizer.json and tokenizer_config.json (the returned
/// directory holds them); a GGUF repo's file when the cache has it (its header holds the
/// tokenizer), else the repo's own tokenizer.json when it has one.
pub fn resolve_tokenizer(spec: &ModelSpec) -> Result<PathBuf, HubError> {
    let (repo, gguf) = match spec {
        ModelSpec::Local(path) => return Ok(path.clone()),
        ModelSpec::Hub { repo, gguf } => (repo, gguf),
    };
    let mut fetcher = Fetcher::new(repo);
    if let Some(choice) = gguf {
        let wanted = match choice {
            GgufChoice::File(file) => file.to_ascii_lowercase(),
            GgufChoice::Quant(quant) => quant.to_ascii_lowercase(),
        };
        let cached = fetcher.snapshot_dir().and_then(|dir| {
            std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
                let name = e.file_name().to_string_lossy().to_ascii_lowercase();
                (name.ends_with(".gguf") && name.contains(&wanted)).then(|| e.path())
            })
        });
        if let Some(file) = cached {
            return Ok(file);
        }
    }
    let hint = "its GGUF is not cached either; name the model's safetensors repo (owner/name) \
                or pass --tokenizer";
    let tokenizer = match fetcher.get("tokenizer.json", gguf.is_some()) {
        Ok(Some(path)) => path,
        Ok(None) => {
            return Err(fetcher.error("tokenizer.json", format!("not in the repo; {hint}")));
        }
        Err(HubError::Download { message, .. }) if gguf.is_some() => {
            return Err(fetcher.error("tokenizer.json", format!("{message}; {hint}")));
        }
        Err(e) => return Err(e),
    };
    fetcher.get("tokenizer_config.json", true)?;
    tokenizer
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| fetcher.error("tokenizer.json", "no snapshot directory"))
}

/// What `kestrel plan` reads of the model `spec` names, fetching as little as it can: a local
/// path as it is; for a safetensors repo, only config.json (the returned directory holds it);
/// for a GGUF repo, the file if the cache already has it (its header is what counts).
pub fn resolve_for_plan(spec: &ModelSpec) -> Result<PathBuf, HubError> {
    let (repo, gguf) = match spec {
        ModelSpec::Local(path) => return Ok(path.clone()),
        ModelSpec::Hub { repo, gguf } => (repo, gguf),
    };
    let mut fetcher = Fetcher::new(repo);
    match gguf {
        None => {
            let config = fetcher
                .get("config.json", false)?
                .ok_or_else(|| fetcher.error("config.json", "not found"))?;
            config
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| fetcher.error("config.json", "no snapshot directory"))
        }
        Some(choice) => {
            let wanted = match choice {
                GgufChoice::File(file) => file.clone(),
                GgufChoice::Quant(quant) => quant.to_ascii_lowercase(),
            };
            let cached = fetcher.snapshot_dir().and_then(|dir| {
                std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
                    let name = e.file_name().to_string_lossy().to_ascii_lowercase();
                    (name.ends_with(".gguf") && name.contains(&wanted.to_ascii_lowercase()))
                        .then(|| e.path())
                })
            });
            cached.ok_or_else(|| {
                fetcher.error(
                    &wanted,
                    "planning reads a GGUF's header from the file, which is not cached; \
                     plan the repo's safetensors sibling (its config.json only) or pass the file",
                )
            })
        }
    }
}

fn shard_names(index: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let map = value["weight_map"]
        .as_object()
        .ok_or("the index has no weight_map")?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    if names.iter().any(|n| n.contains("..") || n.starts_with('/')) {
        return Err("the index names a shard outside the repository".into());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_specs() {
        let hub = |repo: &str, gguf: Option<GgufChoice>| ModelSpec::Hub {
            repo: repo.into(),
            gguf,
        };
        assert_eq!(
            ModelSpec::parse("Qwen/Qwen3-8B").ok(),
            Some(hub("Qwen/Qwen3-8B", None))
        );
        assert_eq!(
            ModelSpec::parse("Qwen/Qwen3-4B-GGUF/Qwen3-4B-Q4_K_M.gguf").ok(),
            Some(hub(
                "Qwen/Qwen3-4B-GGUF",
                Some(GgufChoice::File("Qwen3-4B-Q4_K_M.gguf".into()))
            ))
        );
        assert_eq!(
            ModelSpec::parse("Qwen/Qwen3-4B-GGUF:Q8_0").ok(),
            Some(hub(
                "Qwen/Qwen3-4B-GGUF",
                Some(GgufChoice::Quant("Q8_0".into()))
            ))
        );
        assert!(matches!(ModelSpec::parse("."), Ok(ModelSpec::Local(_))));
        for bad in [
            "/no/such/model",
            "./missing",
            "justaname",
            "a/b/c",
            "a/../b",
            "a/b:",
            "a/b/x.gguf:Q4",
            "a b/c",
        ] {
            assert!(
                matches!(ModelSpec::parse(bad), Err(HubError::NotFound(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_default_depends_on_the_machine() {
        assert_eq!(default_model(true).0, "Qwen/Qwen3-14B");
        assert!(default_model(false).0.ends_with(".gguf"));
    }
}
