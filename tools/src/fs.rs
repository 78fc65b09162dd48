//! `fs`: read, list, search and write files, confined to configured root directories.
//!
//! Paths are relative: to the root when there is one, or starting with a root's directory name
//! when there are several. An absolute path, a `..` component, or a path whose real location
//! (symlinks followed) is outside its root is refused with an error that says so; the check runs
//! on the canonical path, so a symlink inside a root that points outside is caught too.

use std::path::{Component, Path, PathBuf};

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

/// Largest file `read_file` returns whole.
const MAX_READ_BYTES: u64 = 1 << 20;
/// Most entries `search_files` reports.
const MAX_MATCHES: usize = 200;

/// The file-system server.
#[derive(Clone)]
pub struct FsServer {
    roots: Vec<(String, PathBuf)>,
}

/// A path inside the roots.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArg {
    /// Relative path (to the root; with several roots, starting with the root's name).
    pub path: String,
}

/// A search.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Directory to search in ("." for the root).
    pub path: String,
    /// Text that file names must contain (case-insensitive).
    pub pattern: String,
}

/// A file to write.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteArgs {
    /// Relative path of the file.
    pub path: String,
    /// Its new content.
    pub content: String,
}

impl FsServer {
    /// A server over `roots` (each must be an existing directory).
    pub fn new(roots: &[PathBuf]) -> std::io::Result<Self> {
        let mut named = Vec::new();
        for root in roots {
            let canonical = root.canonicalize().map_err(|e| {
                std::io::Error::new(e.kind(), format!("root {}: {e}", root.display()))
            })?;
            if !canonical.is_dir() {
                return Err(std::io::Error::other(format!(
                    "root {} is not a directory",
                    root.display()
                )));
            }
            let name = canonical
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "root".into());
            named.push((name, canonical));
        }
        Ok(Self { roots: named })
    }

    /// Resolves a relative path to a real location inside its root. `must_exist: false` allows a
    /// new file whose parent exists.
    fn resolve(&self, path: &str, must_exist: bool) -> Result<PathBuf, String> {
        let p = Path::new(path);
        if p.is_absolute() {
            return Err(format!(
                "`{path}` is absolute; give a path relative to the root"
            ));
        }
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!("`{path}` contains `..`, which is not allowed"));
        }
        let (root, rest): (&Path, PathBuf) = match self.roots.as_slice() {
            [] => return Err("no root directory is configured".into()),
            [(_, root)] => (root, p.to_path_buf()),
            roots => {
                let mut parts = p.components();
                let first = parts
                    .next()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .unwrap_or_default();
                let Some((_, root)) = roots.iter().find(|(n, _)| *n == first) else {
                    let names: Vec<&str> = roots.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(format!(
                        "`{path}` must start with a root name ({})",
                        names.join(", ")
                    ));
                };
                (root, parts.as_path().to_path_buf())
            }
        };
        let joined = root.join(&rest);
        let real = if must_exist || joined.exists() {
            joined
                .canonicalize()
                .map_err(|e| format!("`{path}`: {e}"))?
        } else {
            let parent = joined.parent().unwrap_or(root);
            let name = joined
                .file_name()
                .ok_or_else(|| format!("`{path}` names no file"))?;
            parent
                .canonicalize()
                .map_err(|e| format!("`{path}`: its directory: {e}"))?
                .join(name)
        };
        if !real.starts_with(root) {
            return Err(format!(
                "`{path}` leads outside the root (through a symbolic link); refused"
            ));
        }
        Ok(real)
    }
}

#[tool_router]
impl FsServer {
    /// Read a text file.
    #[tool(annotations(read_only_hint = true))]
    async fn read_file(&self, Parameters(args): Parameters<PathArg>) -> Result<String, String> {
        let path = self.resolve(&args.path, true)?;
        let meta = std::fs::metadata(&path).map_err(|e| format!("`{}`: {e}", args.path))?;
        if meta.is_dir() {
            return Err(format!(
                "`{}` is a directory; use list_directory",
                args.path
            ));
        }
        if meta.len() > MAX_READ_BYTES {
            return Err(format!(
                "`{}` has {} bytes, over the {MAX_READ_BYTES}-byte limit",
                args.path,
                meta.len()
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("`{}`: {e}", args.path))?;
        String::from_utf8(bytes).map_err(|_| format!("`{}` is not UTF-8 text", args.path))
    }

    /// List a directory: one entry per line, directories ending in `/`.
    #[tool(annotations(read_only_hint = true))]
    async fn list_directory(
        &self,
        Parameters(args): Parameters<PathArg>,
    ) -> Result<String, String> {
        let path = self.resolve(&args.path, true)?;
        let entries = std::fs::read_dir(&path).map_err(|e| format!("`{}`: {e}", args.path))?;
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    format!("{name}/")
                } else {
                    name
                }
            })
            .collect();
        names.sort();
        Ok(names.join("\n"))
    }

    /// Find files whose name contains a pattern, under a directory (relative paths, one per line).
    #[tool(annotations(read_only_hint = true))]
    async fn search_files(
        &self,
        Parameters(args): Parameters<SearchArgs>,
    ) -> Result<String, String> {
        let start = self.resolve(&args.path, true)?;
        let pattern = args.pattern.to_lowercase();
        let mut found = Vec::new();
        let mut stack = vec![start.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                // Symbolic links are not followed: they could leave the root.
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    stack.push(path.clone());
                }
                if entry
                    .file_name()
                    .to_string_lossy()
                    .to_lowercase()
                    .contains(&pattern)
                {
                    let shown = path.strip_prefix(&start).unwrap_or(&path);
                    found.push(shown.display().to_string());
                }
            }
        }
        found.sort();
        let total = found.len();
        found.truncate(MAX_MATCHES);
        let mut text = found.join("\n");
        if total > MAX_MATCHES {
            text.push_str(&format!("\n[{} more not shown]", total - MAX_MATCHES));
        }
        if total == 0 {
            text = format!("no file name contains `{}`", args.pattern);
        }
        Ok(text)
    }

    /// Create or overwrite a text file.
    #[tool(annotations(destructive_hint = true))]
    async fn write_file(&self, Parameters(args): Parameters<WriteArgs>) -> Result<String, String> {
        let path = self.resolve(&args.path, false)?;
        if path.is_dir() {
            return Err(format!("`{}` is a directory", args.path));
        }
        std::fs::write(&path, &args.content).map_err(|e| format!("`{}`: {e}", args.path))?;
        Ok(format!(
            "wrote {} bytes to {}",
            args.content.len(),
            args.path
        ))
    }
}

#[tool_handler]
impl ServerHandler for FsServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("kestrel-fs", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Files under the configured root directories: read, list, search and write them.",
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(dir: &Path) -> FsServer {
        FsServer::new(&[dir.to_path_buf()]).expect("server")
    }

    #[test]
    fn read_tools_are_read_only_and_write_is_destructive() {
        for tool in FsServer::tool_router().list_all() {
            let a = tool.annotations.clone().unwrap_or_default();
            let expected = if tool.name == "write_file" {
                (None, Some(true))
            } else {
                (Some(true), None)
            };
            assert_eq!(
                (a.read_only_hint, a.destructive_hint),
                expected,
                "{}",
                tool.name
            );
        }
    }

    #[test]
    fn paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/a.txt"), "a").expect("write");
        std::fs::write(dir.path().join("secret.txt"), "s").expect("write");
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link")).expect("link");
        let s = server(&root);
        assert!(s.resolve("sub/a.txt", true).is_ok());
        assert!(s.resolve("new.txt", false).is_ok());
        for (path, needle) in [
            ("/etc/passwd", "absolute"),
            ("../secret.txt", "`..`"),
            ("sub/../../secret.txt", "`..`"),
            ("missing/x.txt", "directory"),
        ] {
            let e = s.resolve(path, false).expect_err(path);
            assert!(e.contains(needle), "{path}: {}", e);
        }
        #[cfg(unix)]
        {
            let e = s.resolve("link", true).expect_err("symlink");
            assert!(e.contains("outside the root"), "{}", e);
        }
    }

    #[test]
    fn several_roots_are_named() {
        let a = tempfile::tempdir().expect("a");
        let b = tempfile::tempdir().expect("b");
        std::fs::write(b.path().join("f.txt"), "x").expect("write");
        let s = FsServer::new(&[a.path().to_path_buf(), b.path().to_path_buf()]).expect("server");
        let b_name = b
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(s.resolve(&format!("{b_name}/f.txt"), true).is_ok());
        let e = s.resolve("f.txt", true).expect_err("unnamed");
        assert!(e.contains("root name"), "{}", e);
    }
}
