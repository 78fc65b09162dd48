//! The helper's side: the calling (single-threaded) process confines itself, in an order that
//! works: leave the network first (that needs privileges), drop capabilities, then Landlock
//! (which also sets no-new-privileges, so nothing executed can gain privileges back), and seccomp
//! last (it needs no-new-privileges). Every step fails closed.

use std::collections::BTreeMap;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use nix::sched::{CloneFlags, unshare};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{Isolation, NetworkState, Policy, Status};

/// The oldest Landlock the sandbox accepts: ABI 3 is the first to govern truncation, without
/// which any file the user owns could be emptied.
const REQUIRED_ABI: ABI = ABI::V3;

/// Applies `policy` to this process and everything it will execute.
pub(super) fn confine(policy: &Policy) -> Result<Status, String> {
    let network = leave_network(policy)?;
    let capabilities_dropped = drop_capabilities()?;
    let (landlock_abi, fully_enforced) = restrict_files(policy)?;
    filter_syscalls(network)?;
    Ok(Status {
        landlock_abi,
        fully_enforced,
        network,
        capabilities_dropped,
    })
}

fn leave_network(policy: &Policy) -> Result<NetworkState, String> {
    if policy.network {
        return Ok(NetworkState::Open);
    }
    match policy.isolation {
        Isolation::Seccomp => Ok(NetworkState::Seccomp),
        Isolation::Namespace => own_namespace().map(|()| NetworkState::Namespace),
        Isolation::Auto => Ok(match own_namespace() {
            Ok(()) => NetworkState::Namespace,
            Err(_) => NetworkState::Seccomp,
        }),
    }
}

/// A new, empty network namespace: directly when privileged, else inside a new user namespace
/// that maps only the caller's own ids.
fn own_namespace() -> Result<(), String> {
    if unshare(CloneFlags::CLONE_NEWNET).is_ok() {
        return Ok(());
    }
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("no network namespace: {e}"))?;
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| format!("no network namespace: writing {file}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{uid} {uid} 1"))?;
    write("gid_map", format!("{gid} {gid} 1"))
}

/// Drops every capability, the bounding set included so that running a program as root does
/// not give them back. Returns whether there were any.
fn drop_capabilities() -> Result<bool, String> {
    use caps::{CapSet, Capability};
    let had = caps::read(None, CapSet::Permitted)
        .map(|set| !set.is_empty())
        .map_err(|e| format!("cannot read capabilities: {e}"))?;
    let may_drop_bounding = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(|e| format!("cannot read capabilities: {e}"))?;
    if may_drop_bounding {
        caps::clear(None, CapSet::Bounding)
            .map_err(|e| format!("cannot drop capabilities: {e}"))?;
    } else if nix::unistd::geteuid().is_root() {
        return Err("running as root without CAP_SETPCAP: capabilities cannot be dropped".into());
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("cannot drop capabilities: {e}"))?;
    }
    Ok(had)
}

fn restrict_files(policy: &Policy) -> Result<(i32, bool), String> {
    let newest = ABI::V7;
    let landlock = |e: landlock::RulesetError| {
        format!(
            "Landlock (ABI {} or newer) is not available: {e}; set \"sandbox\": false to run \
             unconfined",
            REQUIRED_ABI as i32
        )
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(REQUIRED_ABI))
        .map_err(landlock)?
        // Rights of newer kernels are taken where present and reported through the status.
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(newest))
        .map_err(landlock)?
        .scope(Scope::from_all(newest))
        .map_err(landlock)?;
    if !policy.network {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(newest))
            .map_err(landlock)?;
    }
    let status = ruleset
        .create()
        .map_err(landlock)?
        .add_rules(path_beneath_rules(
            &policy.read,
            AccessFs::from_read(newest),
        ))
        .map_err(landlock)?
        .add_rules(path_beneath_rules(
            &policy.write,
            AccessFs::from_all(newest),
        ))
        .map_err(landlock)?
        .restrict_self()
        .map_err(landlock)?;
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as i32,
        _ => 0,
    };
    if status.ruleset == RulesetStatus::NotEnforced || abi < REQUIRED_ABI as i32 {
        return Err(format!(
            "Landlock is not enforced by this kernel (ABI {abi}, {} needed); set \"sandbox\": \
             false to run unconfined",
            REQUIRED_ABI as i32
        ));
    }
    if !status.no_new_privs {
        return Err("no-new-privileges could not be set".into());
    }
    Ok((abi, status.ruleset == RulesetStatus::FullyEnforced))
}

/// Without network: no Unix-domain sockets (Landlock does not cover connecting to a socket file
/// such as `docker.sock`), no sockets at all when there is no namespace, and no io_uring, which
/// could open sockets without the `socket` call.
fn filter_syscalls(network: NetworkState) -> Result<(), String> {
    fn seccomp(e: impl std::fmt::Display) -> String {
        format!("seccomp: {e}")
    }
    let socket = match network {
        NetworkState::Open => return Ok(()),
        NetworkState::Namespace => vec![
            SeccompRule::new(vec![
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    libc::AF_UNIX as u64,
                )
                .map_err(seccomp)?,
            ])
            .map_err(seccomp)?,
        ],
        // No conditions: every call.
        NetworkState::Seccomp => Vec::new(),
    };
    let rules = BTreeMap::from([
        (libc::SYS_socket, socket),
        (libc::SYS_io_uring_setup, Vec::new()),
    ]);
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(seccomp)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(seccomp)?;
    let program: BpfProgram = filter.try_into().map_err(seccomp)?;
    seccompiler::apply_filter(&program).map_err(seccomp)
}
