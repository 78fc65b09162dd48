//! One module per subcommand.

pub mod batch;
pub mod bench;
pub mod generate;
pub mod prompt;
pub mod run;
pub mod tools;

/// Resolves on Ctrl-C or SIGTERM: the moment to stop every MCP server before leaving.
pub(crate) async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
