//! Kernel confinement for the programs Kestrel runs on a model's behalf.
//!
//! A list of program names is not a boundary: an allowed `git` runs any command through an alias,
//! `find` through `-exec`, `python3` is everything. So a confined program runs under rules the
//! kernel enforces on it and on everything it starts: Landlock lets it read and execute only the
//! system directories programs need plus the listed ones, and write only under its write
//! directories; without network it gets a network namespace of its own (nothing but a loopback
//! that is down), or, where namespaces are not allowed, seccomp refuses it sockets; Unix-domain
//! sockets on the filesystem (which Landlock does not govern) and io_uring (which would get around
//! the socket filter) are refused too; as root it loses every capability.
//!
//! The rules are applied by a helper, not in the caller: Kestrel's binary re-executes itself as
//! `EXE __sandbox POLICY PROGRAM ARGS...` ([`HELPER_ARG`]), and that single-threaded child confines
//! itself ([`confine`]) and then executes the program, which inherits the rules. So nothing runs
//! between `fork` and `exec` in a multi-threaded process. A binary that runs sandboxed programs
//! calls [`run_helper_if_asked`] first thing in `main`.
//!
//! [`Sandbox::start`] probes once (the helper confines itself and reports what the kernel
//! enforced) so a kernel without Landlock is an error at start-up, never an unconfined run.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[cfg(target_os = "linux")]
mod confine;

/// The first argument that makes Kestrel's binary act as the sandbox helper.
pub const HELPER_ARG: &str = "__sandbox";

/// How a program is kept off the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// A network namespace where the kernel allows one, otherwise seccomp.
    #[default]
    Auto,
    /// A network namespace, or fail.
    Namespace,
    /// Seccomp alone: no sockets at all.
    Seccomp,
}

/// What a sandboxed program may reach beyond the system directories, as written in a
/// configuration: `"sandbox": {"read": [...], "write": [...], "network": false}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxOptions {
    /// More directories or files it may read and execute.
    #[serde(default)]
    pub read: Vec<PathBuf>,
    /// More directories or files it may also write.
    #[serde(default)]
    pub write: Vec<PathBuf>,
    /// Whether it may use the network (and Unix sockets); default false.
    #[serde(default)]
    pub network: bool,
    /// How the network is taken away (default: `auto`).
    #[serde(default)]
    pub isolation: Isolation,
}

/// A server's `sandbox` option: `false`, `true` (the defaults) or [`SandboxOptions`].
#[derive(Debug, Clone, PartialEq)]
pub enum SandboxSetting {
    /// Unconfined, by the user's explicit choice.
    Off,
    /// Confined with these options.
    On(SandboxOptions),
}

impl Default for SandboxSetting {
    fn default() -> Self {
        SandboxSetting::On(SandboxOptions::default())
    }
}

impl<'de> Deserialize<'de> for SandboxSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(false) => Ok(SandboxSetting::Off),
            serde_json::Value::Bool(true) => Ok(SandboxSetting::default()),
            value @ serde_json::Value::Object(_) => serde_json::from_value(value)
                .map(SandboxSetting::On)
                .map_err(|e| serde::de::Error::custom(format!("`sandbox`: {e}"))),
            _ => Err(serde::de::Error::custom(
                "`sandbox` is true, false or {\"read\": [...], \"write\": [...], \"network\": bool}",
            )),
        }
    }
}

/// Everything the helper needs: the full lists of paths and the network rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Read and execute.
    pub read: Vec<PathBuf>,
    /// Read, write and execute.
    pub write: Vec<PathBuf>,
    /// Network and Unix sockets allowed.
    pub network: bool,
    /// How the network is taken away.
    pub isolation: Isolation,
}

/// What programs need to start and run: read-only system directories and a few device files.
/// `/etc` as a whole is left out (it holds secrets a root-owned program could read), only the
/// files the loader, name lookups, TLS and common tools read are in.
pub const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/gitconfig",
    "/etc/mime.types",
    "/etc/os-release",
    "/dev/zero",
    "/dev/random",
    "/dev/urandom",
];

/// Device files programs write to.
pub const SYSTEM_WRITE: &[&str] = &["/dev/null", "/dev/full"];

impl Policy {
    /// The system paths, `options`' paths and `writable` (a tool's working directories).
    /// Listed paths must exist; system paths that do not are skipped.
    pub fn new(options: &SandboxOptions, writable: &[PathBuf]) -> Result<Self, SandboxError> {
        let existing = |paths: &[&str]| -> Vec<PathBuf> {
            paths
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.exists())
                .collect()
        };
        let mut read = existing(SYSTEM_READ);
        // Python keeps its site configuration in /etc/python3.X.
        if let Ok(entries) = std::fs::read_dir("/etc") {
            let mut python: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                .map(|e| e.path())
                .collect();
            python.sort();
            read.extend(python);
        }
        let mut write = existing(SYSTEM_WRITE);
        for (list, named) in [(&mut read, &options.read), (&mut write, &options.write)] {
            for path in named {
                if !path.exists() {
                    return Err(SandboxError(format!(
                        "sandbox path {} does not exist",
                        path.display()
                    )));
                }
                list.push(path.clone());
            }
        }
        write.extend(writable.iter().cloned());
        Ok(Policy {
            read,
            write,
            network: options.network,
            isolation: options.isolation,
        })
    }
}

/// How the network is closed for a sandboxed program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkState {
    /// Allowed by the policy.
    Open,
    /// A network namespace of its own, Unix sockets refused by seccomp.
    Namespace,
    /// No sockets at all (seccomp).
    Seccomp,
}

/// What the kernel enforces on a sandboxed program, as the helper found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The Landlock ABI version in use.
    pub landlock_abi: i32,
    /// Whether every Landlock right asked for is enforced (older kernels miss a few optional
    /// ones, such as device ioctls or signal scoping).
    pub fully_enforced: bool,
    /// The network rule.
    pub network: NetworkState,
    /// Whether capabilities were dropped (the helper ran with some).
    pub capabilities_dropped: bool,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Landlock ABI {}", self.landlock_abi)?;
        if !self.fully_enforced {
            write!(f, " (partly: an older kernel)")?;
        }
        f.write_str(match self.network {
            NetworkState::Open => ", network allowed",
            NetworkState::Namespace => ", no network (own namespace)",
            NetworkState::Seccomp => ", no network (seccomp)",
        })?;
        if self.capabilities_dropped {
            f.write_str(", capabilities dropped")?;
        }
        Ok(())
    }
}

/// Why a sandbox cannot be set up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SandboxError(pub String);

/// A probed sandbox: the helper to run, the policy it applies and what the kernel enforces.
#[derive(Debug, Clone)]
pub struct Sandbox {
    helper: PathBuf,
    policy: Policy,
    policy_json: String,
    status: Status,
}

impl Sandbox {
    /// Checks that `helper` can apply `policy` on this kernel (it confines itself and reports),
    /// so a missing Landlock fails here with the reason, before any program runs.
    pub fn start(helper: &Path, policy: Policy) -> Result<Self, SandboxError> {
        let policy_json = serde_json::to_string(&policy)
            .map_err(|e| SandboxError(format!("the sandbox policy: {e}")))?;
        let output = std::process::Command::new(helper)
            .arg(HELPER_ARG)
            .arg(&policy_json)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                SandboxError(format!(
                    "cannot run the sandbox helper {}: {e}",
                    helper.display()
                ))
            })?;
        if !output.status.success() {
            let why = String::from_utf8_lossy(&output.stderr);
            let why = why.trim().trim_start_matches("kestrel sandbox: ");
            return Err(SandboxError(if why.is_empty() {
                format!(
                    "{} did not act as the sandbox helper ({})",
                    helper.display(),
                    output.status
                )
            } else {
                why.to_string()
            }));
        }
        let status: Status = serde_json::from_slice(&output.stdout).map_err(|e| {
            SandboxError(format!(
                "{} did not report a sandbox status: {e}",
                helper.display()
            ))
        })?;
        Ok(Sandbox {
            helper: helper.to_path_buf(),
            policy,
            policy_json,
            status,
        })
    }

    /// The program and arguments that run `program args` confined.
    pub fn wrap<'a>(
        &'a self,
        program: &'a OsStr,
        args: impl IntoIterator<Item = &'a OsStr>,
    ) -> (&'a Path, Vec<OsString>) {
        let mut all: Vec<OsString> = vec![HELPER_ARG.into(), self.policy_json.clone().into()];
        all.push(program.to_os_string());
        all.extend(args.into_iter().map(OsStr::to_os_string));
        (&self.helper, all)
    }

    /// What the kernel enforces.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The rules applied.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// The running executable, which acts as the helper when it calls [`run_helper_if_asked`].
pub fn current_helper() -> Result<PathBuf, SandboxError> {
    std::env::current_exe()
        .map_err(|e| SandboxError(format!("cannot find Kestrel's own executable: {e}")))
}

/// Acts as the sandbox helper when this process was started as one (`EXE __sandbox ...`):
/// confines itself and executes the program, or, without one, reports the sandbox's status on
/// stdout. Returns only when the process was started normally.
pub fn run_helper_if_asked() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(HELPER_ARG)) {
        return;
    }
    let code = match helper(args.collect()) {
        Ok(()) => 0,
        Err(HelperFailure { code, message }) => {
            eprintln!("kestrel sandbox: {message}");
            code
        }
    };
    std::process::exit(code);
}

struct HelperFailure {
    code: i32,
    message: String,
}

fn helper(args: Vec<OsString>) -> Result<(), HelperFailure> {
    let fail = |code: i32| move |message: String| HelperFailure { code, message };
    let Some((policy, command)) = args.split_first() else {
        return Err(fail(126)("no policy given".into()));
    };
    let policy: Policy = serde_json::from_str(&policy.to_string_lossy())
        .map_err(|e| fail(126)(format!("the policy is not valid: {e}")))?;
    let status = confine_self(&policy).map_err(fail(126))?;
    let Some((program, args)) = command.split_first() else {
        self_check(&policy).map_err(fail(126))?;
        let report = serde_json::to_string(&status).map_err(|e| fail(126)(e.to_string()))?;
        println!("{report}");
        return Ok(());
    };
    exec(program, args).map_err(fail(127))
}

#[cfg(target_os = "linux")]
fn confine_self(policy: &Policy) -> Result<Status, String> {
    confine::confine(policy)
}

#[cfg(not(target_os = "linux"))]
fn confine_self(_: &Policy) -> Result<Status, String> {
    Err("the sandbox needs Linux (Landlock); set \"sandbox\": false to run unconfined".into())
}

/// Proves the rules hold: the root directory must not be listable unless the policy opens it.
fn self_check(policy: &Policy) -> Result<(), String> {
    let root = Path::new("/");
    let opened = policy.read.iter().chain(&policy.write).any(|p| p == root);
    if !opened && std::fs::read_dir(root).is_ok() {
        return Err("the sandbox was applied but `/` can still be listed".into());
    }
    Ok(())
}

#[cfg(unix)]
fn exec(program: &OsStr, args: &[OsString]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(program).args(args).exec();
    Err(format!(
        "cannot run `{}`: {error}",
        program.to_string_lossy()
    ))
}

#[cfg(not(unix))]
fn exec(program: &OsStr, _: &[OsString]) -> Result<(), String> {
    Err(format!("cannot run `{}` here", program.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_is_false_true_or_options() {
        let setting = |v: serde_json::Value| serde_json::from_value::<SandboxSetting>(v);
        assert_eq!(
            setting(serde_json::json!(false)).ok(),
            Some(SandboxSetting::Off)
        );
        assert_eq!(
            setting(serde_json::json!(true)).ok(),
            Some(SandboxSetting::default())
        );
        let on = setting(serde_json::json!({"read": ["/opt"], "network": true})).expect("options");
        let SandboxSetting::On(options) = on else {
            panic!("{on:?}")
        };
        assert_eq!(options.read, [PathBuf::from("/opt")]);
        assert!(options.network);
        let e = setting(serde_json::json!({"reed": []})).expect_err("a typo");
        assert!(e.to_string().contains("unknown field `reed`"), "{e}");
        let e = setting(serde_json::json!("yes")).expect_err("a string");
        assert!(e.to_string().contains("true, false or"), "{e}");
    }

    #[test]
    fn a_helper_that_is_not_one_is_an_error_not_an_open_door() {
        let policy = Policy::new(&SandboxOptions::default(), &[]).expect("policy");
        for (helper, expected) in [
            (
                "/no/such/helper",
                "cannot run the sandbox helper /no/such/helper",
            ),
            ("false", "did not act as the sandbox helper"),
            ("true", "did not report a sandbox status"),
        ] {
            let e = Sandbox::start(Path::new(helper), policy.clone()).expect_err(helper);
            assert!(e.0.contains(expected), "{helper}: {e}");
        }
    }

    #[test]
    fn a_policy_names_a_missing_path() {
        let options = SandboxOptions {
            write: vec![PathBuf::from("/no/such/dir")],
            ..SandboxOptions::default()
        };
        let e = Policy::new(&options, &[]).expect_err("missing");
        assert!(e.0.contains("/no/such/dir does not exist"), "{e}");
        let policy =
            Policy::new(&SandboxOptions::default(), &[std::env::temp_dir()]).expect("policy");
        assert!(policy.read.contains(&PathBuf::from("/usr")));
        assert!(!policy.read.contains(&PathBuf::from("/etc")));
        assert!(policy.write.contains(&std::env::temp_dir()));
    }
}
