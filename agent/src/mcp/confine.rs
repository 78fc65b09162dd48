//! Confining a stdio server (see [`kestrel_tools::sandbox`]): what it may read and write.
//!
//! A server needs its own program files, which live wherever it was installed, so the sandbox
//! opens, read-only, the installation around the command and around every argument that names an
//! existing file: the directory holding a `node_modules` tree or a Python virtual environment when
//! the file is inside one, else the file's own directory. The server's `cwd` is readable too; the
//! host's roots and the entry's `write` list are writable; everything else is closed.

use std::path::{Path, PathBuf};

use kestrel_tools::sandbox::{Policy, Sandbox, SandboxOptions};

/// Probes and returns the sandbox for a stdio server.
pub(crate) fn server_sandbox(
    command: &str,
    args: &[String],
    cwd: Option<&Path>,
    settings: &SandboxOptions,
    roots: &[PathBuf],
    helper: &Path,
) -> Result<Sandbox, String> {
    let mut settings = settings.clone();
    let base = cwd
        .map(Path::to_path_buf)
        .or_else(|| std::env::current_dir().ok());
    let program = resolve(command, base.as_deref());
    let files = program.into_iter().chain(args.iter().filter_map(|a| {
        let path = Path::new(a);
        let path = match &base {
            Some(b) if path.is_relative() => b.join(path),
            _ => path.to_path_buf(),
        };
        path.is_file().then_some(path)
    }));
    for file in files {
        for dir in installations(&file) {
            if !settings.read.contains(&dir) {
                settings.read.push(dir);
            }
        }
    }
    settings.read.extend(cwd.map(Path::to_path_buf));
    let policy = Policy::new(&settings, roots).map_err(|e| e.to_string())?;
    Sandbox::start(helper, policy).map_err(|e| {
        format!("its sandbox cannot start: {e} (set \"sandbox\": false on the server to run it unconfined)")
    })
}

/// The command's file: as given when it has a slash, else found on `PATH`.
fn resolve(command: &str, base: Option<&Path>) -> Option<PathBuf> {
    let path = Path::new(command);
    if command.contains('/') {
        let path = match base {
            Some(b) if path.is_relative() => b.join(path),
            _ => path.to_path_buf(),
        };
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
}

/// The installations a program file belongs to (see the module comment), found from the path as
/// given (a virtual environment's `bin/python` links out of it) and from the file it resolves to.
fn installations(file: &Path) -> Vec<PathBuf> {
    let Ok(real) = file.canonicalize() else {
        return Vec::new();
    };
    let tree = |path: &Path| {
        path.ancestors().skip(1).find_map(|dir| {
            if dir.file_name().is_some_and(|n| n == "node_modules") {
                dir.parent().map(Path::to_path_buf)
            } else {
                dir.join("pyvenv.cfg").is_file().then(|| dir.to_path_buf())
            }
        })
    };
    let own = || {
        real.parent()
            .filter(|p| p.parent().is_some())
            .map(Path::to_path_buf)
    };
    let mut found: Vec<PathBuf> = [tree(file), tree(&real).or_else(own)]
        .into_iter()
        .flatten()
        .collect();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installation_is_its_package_tree_or_its_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = dir.path().canonicalize().expect("real");
        let script = base.join("app/node_modules/pkg/dist/index.js");
        let venv = base.join("venv/bin/server");
        let lone = base.join("tools/run.sh");
        for file in [&script, &venv, &lone] {
            std::fs::create_dir_all(file.parent().expect("dir")).expect("dirs");
            std::fs::write(file, "").expect("file");
        }
        std::fs::write(base.join("venv/pyvenv.cfg"), "").expect("cfg");
        assert_eq!(installations(&script), [base.join("app")]);
        assert_eq!(installations(&venv), [base.join("venv")]);
        assert_eq!(installations(&lone), [base.join("tools")]);
        let python = base.join("venv/bin/python");
        std::os::unix::fs::symlink(&lone, &python).expect("link");
        assert_eq!(
            installations(&python),
            [base.join("venv"), base.join("tools")]
        );
        assert_eq!(resolve("sh", None).map(|p| p.is_file()), Some(true));
        assert_eq!(
            resolve("./tools/run.sh", Some(&base)),
            Some(base.join("./tools/run.sh"))
        );
    }
}
