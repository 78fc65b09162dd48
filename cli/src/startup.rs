//! Start-up and shutdown, shared by every command that starts MCP servers: the async runtime, the
//! MCP host (with the local model answering servers' sampling requests when there is one), what
//! Ctrl-C does, and the one way out, which stops every server gracefully.
//!
//! Ctrl-C means the same everywhere: the first one cancels the running task (its generation and
//! the tool calls in flight; `chat` then returns to its prompt); a second one, one while no task
//! runs, or SIGTERM stops every server and exits. Stopping a server closes its connection first
//! (a stdio server sees EOF on stdin, an HTTP session gets its DELETE) and signals its process
//! group only if it does not exit by itself.

use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use kestrel::agent::{ApprovalPolicy, Approver, Cancel, ModelSamplingHandler};
use kestrel::backend::Backend;
use kestrel::mcp::{ElicitationHandle, HostEvent, HostOptions, McpConfig, McpHost, SamplingHandle};
use tokio::runtime::Runtime;
use tokio::sync::broadcast;

/// Exit code after an interrupt (128 + SIGINT).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;
/// Exit code after SIGTERM (128 + SIGTERM).
const EXIT_TERMINATED: i32 = 143;

/// The async runtime the MCP host and its calls run on (generation keeps the calling thread).
fn runtime() -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Interrupt,
    Terminate,
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn next_signal() -> Signal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Signal::Interrupt,
                _ = term.recv() => return Signal::Terminate,
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    Signal::Interrupt
}

/// The tasks a Ctrl-C would cancel now.
#[derive(Default)]
struct Running(Mutex<Vec<Cancel>>);

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Cancel>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The runtime and MCP host of a command, and the signal handling around them.
pub(crate) struct Services {
    pub(crate) runtime: Runtime,
    pub(crate) host: Arc<McpHost>,
    running: Arc<Running>,
}

/// While it lives, Ctrl-C cancels the task it was made for instead of exiting.
pub(crate) struct CancelOnInterrupt<'a> {
    running: &'a Running,
    cancel: Cancel,
}

impl Drop for CancelOnInterrupt<'_> {
    fn drop(&mut self) {
        let mut running = self.running.lock();
        if let Some(i) = running.iter().position(|c| c.same_as(&self.cancel)) {
            running.swap_remove(i);
        }
    }
}

/// What a command's host is started with, besides its configuration.
#[derive(Default)]
pub(crate) struct HostSetup<'a> {
    /// The model that answers servers' sampling requests, under this policy (and approver, when a
    /// person is there); without one the sampling capability is not offered.
    pub(crate) sampling: Option<(&'a Arc<dyn Backend>, &'a ApprovalPolicy, Option<Approver>)>,
    /// Where host events go (progress, server logs), from the start.
    pub(crate) events: Option<broadcast::Sender<HostEvent>>,
    /// Answers servers' requests for input (declined without one).
    pub(crate) elicitation: Option<ElicitationHandle>,
}

impl Services {
    /// Starts the host for `config` as `setup` says. On a signal the host is stopped, `farewell`
    /// printed and the process ends (see the module's comment).
    pub(crate) fn start(
        config: &McpConfig,
        setup: HostSetup<'_>,
        farewell: &'static str,
    ) -> anyhow::Result<Self> {
        let runtime = runtime()?;
        let sampling = match setup.sampling {
            Some((backend, policy, approver)) => {
                let handler = ModelSamplingHandler::new(backend.clone(), policy.clone(), approver)?;
                Some(SamplingHandle(Arc::new(handler)))
            }
            None => None,
        };
        let defaults = HostOptions::from_config(config);
        let options = HostOptions {
            sampling,
            elicitation: setup.elicitation.unwrap_or(defaults.elicitation.clone()),
            ..defaults
        };
        let events = setup.events.unwrap_or_else(|| broadcast::channel(1024).0);
        // Listening before the servers start: a Ctrl-C while they start still stops them.
        let running = Arc::new(Running::default());
        let started: Arc<OnceLock<Arc<McpHost>>> = Arc::default();
        let (on_signal, tasks) = (started.clone(), running.clone());
        runtime.spawn(async move {
            loop {
                let signal = next_signal().await;
                if signal == Signal::Interrupt {
                    let cancels = std::mem::take(&mut *tasks.lock());
                    if !cancels.is_empty() {
                        cancels.iter().for_each(Cancel::cancel);
                        eprintln!("\ninterrupted: cancelling (Ctrl-C again to exit)");
                        continue;
                    }
                }
                if let Some(host) = on_signal.get() {
                    host.shutdown().await;
                }
                eprintln!("\n{farewell}");
                std::process::exit(match signal {
                    Signal::Interrupt => i32::from(EXIT_INTERRUPTED),
                    Signal::Terminate => EXIT_TERMINATED,
                });
            }
        });
        let host = runtime.block_on(McpHost::start_with_events(config, options, events));
        let host = Arc::new(host);
        let _ = started.set(host.clone());
        Ok(Self {
            runtime,
            host,
            running,
        })
    }

    /// Warns about each server that is not available (for commands that go on without it).
    pub(crate) fn warn_unavailable(&self) {
        for s in self.runtime.block_on(self.host.status()) {
            if let Some(e) = s.error {
                eprintln!("warning: MCP server `{}` is not available: {e}", s.name);
            }
        }
    }

    /// Makes the next Ctrl-C cancel `cancel`'s task, until the guard is dropped.
    pub(crate) fn cancel_on_interrupt(&self, cancel: &Cancel) -> CancelOnInterrupt<'_> {
        self.running.lock().push(cancel.clone());
        CancelOnInterrupt {
            running: &self.running,
            cancel: cancel.clone(),
        }
    }

    /// Stops every server (the normal way out, after success or error alike).
    pub(crate) fn shutdown(self) {
        self.runtime.block_on(self.host.shutdown());
    }
}
