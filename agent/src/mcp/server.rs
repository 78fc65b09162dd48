//! One configured server: its connection, its state, and when it may be restarted.
//!
//! The state is a small machine behind a plain mutex: disabled, starting, up (a live connection),
//! down (the error, and when a restart may be tried), or stopped (the host is shutting down). The
//! lock is held only to look at or change the state, never across I/O, a restart or a sleep: what
//! a call needs of a live connection (its peer and tool list) is cloned out and used unlocked, so
//! calls to the same server run concurrently and a server that restarts or lists slowly delays
//! nobody but the calls that need it.
//!
//! A restart runs as a task of its own, so a caller that gives up (a cancelled turn) does not leave
//! the server half-started; callers that need the server meanwhile wait for its outcome. It is
//! tried at once after a crash, then with a doubling delay while restarts keep failing. A call in
//! flight when a server dies answers with an error rather than a retry: the tool may have done part
//! of its work.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rmcp::model::{ProgressToken, Tool};
use rmcp::{Peer, RoleClient};
use tokio::sync::{broadcast, watch};

use super::client::{KestrelClient, ProgressCalls};
use super::config::ServerConfig;
use super::connect::{Connection, connect, list_tools};
use super::error::CallError;
use super::events::HostEvent;
use super::oauth::SharedAuth;
use super::options::HostOptions;

/// What every server shares: the host's settings and its event channel.
pub(crate) struct Shared {
    pub(crate) options: HostOptions,
    pub(crate) events: broadcast::Sender<HostEvent>,
}

impl Shared {
    fn publish(&self, event: HostEvent) {
        // Nobody listening is normal.
        let _ = self.events.send(event);
    }
}

enum State {
    Disabled,
    /// Being connected by a task of its own; the receiver turns `true` when it is done.
    Starting(watch::Receiver<bool>),
    Up(Box<Connection>),
    Down {
        error: String,
        failures: u32,
        retry_at: Instant,
    },
    /// Shut down; never restarted.
    Stopped,
}

/// What a call needs of a live connection, taken out of the state so that it is used unlocked.
#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) peer: Peer<RoleClient>,
    /// The connection's handler, which also answers the input a 2026-07-28 server asks for in a
    /// result rather than a request.
    pub(crate) handler: KestrelClient,
    pub(crate) tools: Arc<[Tool]>,
    /// Whether the server offers resources (so a link in its results can be read).
    pub(crate) has_resources: bool,
    /// The OAuth manager behind the connection's token, when it has one.
    pub(crate) auth: Option<SharedAuth>,
    /// Which connection this is: a tool list fetched for an older one is not installed.
    epoch: u64,
    log: Option<PathBuf>,
}

/// The next thing [`Server::live`] does, decided under the lock and done without it.
enum Step {
    Ready(Live),
    Fail(CallError),
    /// A connection found dead, to stop before looking again.
    StopDead(Box<Connection>),
    /// A start under way (perhaps just begun).
    Wait(watch::Receiver<bool>),
}

/// A server's state as `tools list` shows it.
pub(crate) struct Snapshot {
    /// `connected`, `starting`, `failed`, `disabled` or `stopped`.
    pub(crate) status: &'static str,
    pub(crate) protocol: Option<String>,
    pub(crate) server_info: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) log: Option<PathBuf>,
    /// The live connection's tools, else the last ones it offered (empty before it ever started).
    pub(crate) tools: Arc<[Tool]>,
    pub(crate) has_resources: bool,
    pub(crate) pid: Option<u32>,
    pub(crate) sandbox: Option<String>,
}

/// One configured server.
pub(crate) struct Server {
    pub(crate) config: ServerConfig,
    shared: Arc<Shared>,
    tools_changed: Arc<AtomicBool>,
    pub(crate) progress_calls: ProgressCalls,
    /// Counts connections, so a late tool listing is never installed on a newer one.
    epochs: AtomicU64,
    /// The tools of the last connection: offered while the server restarts, so the prompt (and
    /// the KV cache behind it) stays the same and a call can bring the server back.
    last_tools: Mutex<Arc<[Tool]>>,
    state: Mutex<State>,
}

impl Server {
    pub(crate) fn new(config: ServerConfig, shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            config,
            shared,
            tools_changed: Arc::new(AtomicBool::new(false)),
            progress_calls: ProgressCalls::default(),
            epochs: AtomicU64::new(0),
            last_tools: Mutex::new(Arc::new([])),
            state: Mutex::new(State::Disabled),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Remembers which call a request's progress token belongs to.
    pub(crate) fn track_progress(&self, token: ProgressToken, call: u64) {
        if let Ok(mut calls) = self.progress_calls.lock() {
            // Entries outlive their call a little: the last progress notification may be handled
            // after the response. Tokens are never reused on a connection, so the map is only
            // trimmed, oldest calls first, when it grows.
            if calls.len() >= 1024 {
                let mut oldest: Vec<u64> = calls.values().copied().collect();
                oldest.sort_unstable();
                let cutoff = oldest[oldest.len() / 2];
                calls.retain(|_, c| *c > cutoff);
            }
            calls.insert(token, call);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is replaced whole under the lock, so a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the server and waits for the outcome (at host start-up).
    pub(crate) async fn start(self: &Arc<Self>) {
        if !self.config.enabled {
            return;
        }
        let done = self.begin_start(&mut self.state(), 0);
        wait_started(done).await;
    }

    /// Switches `state` to starting and connects in a task of its own; the receiver says when it
    /// is done. The caller holds the lock, so only one start is ever under way.
    fn begin_start(self: &Arc<Self>, state: &mut State, failures: u32) -> watch::Receiver<bool> {
        let (done_tx, done) = watch::channel(false);
        *state = State::Starting(done.clone());
        let server = self.clone();
        tokio::spawn(async move {
            server.connect_now(failures).await;
            let _ = done_tx.send(true);
        });
        done
    }

    async fn connect_now(&self, failures: u32) {
        let handler = KestrelClient {
            server: self.config.name.as_str().into(),
            roots: self.shared.options.roots.clone().into(),
            tools_changed: self.tools_changed.clone(),
            events: self.shared.events.clone(),
            progress_calls: self.progress_calls.clone(),
            sampling: self.shared.options.sampling.clone(),
            elicitation: self.shared.options.elicitation.clone(),
        };
        self.tools_changed.store(false, Ordering::SeqCst);
        let outcome = connect(&self.config, &self.shared.options, handler).await;
        if let Some(unwanted) = self.install(outcome, failures) {
            unwanted.stop().await;
        }
    }

    /// Stores a start's outcome; hands the connection back when the host was shut down meanwhile.
    fn install(&self, outcome: Result<Connection, String>, failures: u32) -> Option<Connection> {
        let mut state = self.state();
        if matches!(*state, State::Stopped) {
            return outcome.ok();
        }
        match outcome {
            Ok(conn) => {
                self.epochs.fetch_add(1, Ordering::SeqCst);
                *self.last_tools.lock().unwrap_or_else(|e| e.into_inner()) = conn.tools.clone();
                self.shared.publish(HostEvent::Connected {
                    server: self.config.name.clone(),
                    protocol: conn.protocol.clone(),
                    tools: conn.tools.len(),
                });
                *state = State::Up(Box::new(conn));
            }
            Err(error) => {
                self.shared.publish(HostEvent::Failed {
                    server: self.config.name.clone(),
                    error: error.clone(),
                });
                let options = &self.shared.options;
                let delay = options
                    .restart_backoff
                    .saturating_mul(1 << failures.min(16))
                    .min(options.max_restart_backoff);
                *state = State::Down {
                    error,
                    failures: failures + 1,
                    retry_at: Instant::now() + delay,
                };
            }
        }
        None
    }

    /// The live connection, restarting a crashed or failed server when its backoff allows.
    pub(crate) async fn live(self: &Arc<Self>) -> Result<Live, CallError> {
        loop {
            match self.next_step() {
                Step::Ready(live) => return Ok(self.with_fresh_tools(live).await),
                Step::Fail(e) => return Err(e),
                Step::StopDead(dead) => dead.stop().await,
                Step::Wait(done) => {
                    wait_started(done).await;
                    if let State::Down { error, .. } = &*self.state() {
                        return Err(CallError::Unavailable {
                            server: self.config.name.clone(),
                            reason: error.clone(),
                        });
                    }
                }
            }
        }
    }

    /// What [`Server::live`] does next, decided under the lock.
    fn next_step(self: &Arc<Self>) -> Step {
        let name = &self.config.name;
        let mut state = self.state();
        if let State::Up(conn) = &*state
            && conn.is_closed()
        {
            let error = conn.exit_reason();
            self.shared.publish(HostEvent::Failed {
                server: name.clone(),
                error: error.clone(),
            });
            let down = State::Down {
                error,
                failures: 0,
                retry_at: Instant::now(),
            };
            if let State::Up(dead) = std::mem::replace(&mut *state, down) {
                return Step::StopDead(dead);
            }
        }
        match &*state {
            State::Disabled => Step::Fail(CallError::Disabled {
                server: name.clone(),
            }),
            State::Stopped => Step::Fail(CallError::Unavailable {
                server: name.clone(),
                reason: "the host is shutting down".into(),
            }),
            State::Up(conn) => Step::Ready(self.live_of(conn)),
            State::Down {
                error, retry_at, ..
            } if Instant::now() < *retry_at => Step::Fail(CallError::Unavailable {
                server: name.clone(),
                reason: format!(
                    "{error} (next restart attempt in {:.1} s)",
                    (*retry_at - Instant::now()).as_secs_f64()
                ),
            }),
            State::Down { failures, .. } => {
                let failures = *failures;
                Step::Wait(self.begin_start(&mut state, failures))
            }
            State::Starting(done) => Step::Wait(done.clone()),
        }
    }

    fn live_of(&self, conn: &Connection) -> Live {
        Live {
            peer: conn.service.peer().clone(),
            handler: conn.service.service().clone(),
            tools: conn.tools.clone(),
            has_resources: conn.has_resources,
            auth: conn.auth.clone(),
            epoch: self.epochs.load(Ordering::SeqCst),
            log: conn.log.clone(),
        }
    }

    /// The live connection if the server is up now; never starts or waits for it.
    pub(crate) fn live_now(&self) -> Option<Live> {
        match &*self.state() {
            State::Up(conn) if !conn.is_closed() => Some(self.live_of(conn)),
            _ => None,
        }
    }

    /// Lists the tools again when the server said they changed, unlocked; on failure the old list
    /// stays (a server busy for a moment should not lose its tools).
    async fn with_fresh_tools(&self, mut live: Live) -> Live {
        if !self.tools_changed.swap(false, Ordering::SeqCst) {
            return live;
        }
        let limit = self.config.startup_timeout;
        let Ok(tools) = list_tools(&live.peer, &self.config, limit).await else {
            return live;
        };
        live.tools = tools.clone();
        let mut state = self.state();
        if let State::Up(conn) = &mut *state
            && self.epochs.load(Ordering::SeqCst) == live.epoch
        {
            conn.tools = tools.clone();
            *self.last_tools.lock().unwrap_or_else(|e| e.into_inner()) = tools;
        }
        live
    }

    /// The state for `tools list` and the offered tools, re-listing tools that changed. Never
    /// starts the server or waits for its start.
    pub(crate) async fn snapshot(&self) -> Snapshot {
        let last_tools = self
            .last_tools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut snapshot = Snapshot {
            status: "disabled",
            protocol: None,
            server_info: None,
            error: None,
            log: None,
            tools: last_tools,
            has_resources: false,
            pid: None,
            sandbox: None,
        };
        let live = {
            let state = self.state();
            match &*state {
                State::Disabled => None,
                State::Stopped => {
                    snapshot.status = "stopped";
                    None
                }
                State::Starting(_) => {
                    snapshot.status = "starting";
                    None
                }
                State::Down { error, .. } => {
                    snapshot.status = "failed";
                    snapshot.error = Some(error.clone());
                    None
                }
                State::Up(conn) => {
                    snapshot.status = "connected";
                    snapshot.protocol = Some(conn.protocol.clone());
                    snapshot.server_info = conn.server_info.clone();
                    snapshot.log = conn.log.clone();
                    snapshot.has_resources = conn.has_resources;
                    snapshot.pid = conn.pid();
                    snapshot.sandbox = conn.sandbox.clone();
                    Some(self.live_of(conn))
                }
            }
        };
        if let Some(live) = live {
            snapshot.tools = self.with_fresh_tools(live).await.tools;
        }
        snapshot
    }

    /// After a call failed because the connection closed: waits briefly (unlocked) for the
    /// server to be seen dead, and says how it ended.
    pub(crate) async fn exit_note(&self, live: &Live) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while !live.peer.is_transport_closed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !live.peer.is_transport_closed() {
            return String::new();
        }
        let reason = match &live.log {
            Some(log) => format!(
                "the server process exited{}",
                super::connect::stderr_tail(log)
            ),
            None => "the server closed the connection".into(),
        };
        format!(" ({reason}; it is restarted on the next call)")
    }

    /// Stops the server for good: closes the connection (stdin's EOF, or the HTTP session's
    /// DELETE), then stops its process group (SIGTERM, then SIGKILL after a grace period).
    pub(crate) async fn stop(&self) {
        let (old, starting) = {
            let mut state = self.state();
            match std::mem::replace(&mut *state, State::Stopped) {
                State::Up(conn) => (Some(conn), None),
                State::Starting(done) => (None, Some(done)),
                _ => (None, None),
            }
        };
        if let Some(conn) = old {
            conn.stop().await;
        }
        // A start under way sees `Stopped` when it finishes and stops what it connected.
        if let Some(done) = starting {
            wait_started(done).await;
        }
    }
}

async fn wait_started(mut done: watch::Receiver<bool>) {
    // An error means the starting task is gone; the state says what it left.
    let _ = done.wait_for(|finished| *finished).await;
}
