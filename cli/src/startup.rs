//! Start-up and shutdown shared by the commands: the async runtime, the MCP host with the local
//! model answering servers' sampling requests, and what Ctrl-C or SIGTERM does.

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

/// The async runtime the MCP host and its calls run on (generation keeps the calling thread).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Starts the MCP host for an agent command, with servers' sampling requests answered by `model`
/// under `policy` (and `approver`, when a person is there); on Ctrl-C or SIGTERM it stops every
/// server, prints `farewell` and exits with 130.
pub(crate) fn start_host(
    runtime: &tokio::runtime::Runtime,
    config: &kestrel::mcp::McpConfig,
    sampling: (
        &std::sync::Arc<kestrel_engine::Model>,
        &kestrel::agent::ApprovalPolicy,
        Option<kestrel::agent::Approver>,
    ),
    farewell: &'static str,
) -> anyhow::Result<std::sync::Arc<kestrel::mcp::McpHost>> {
    use kestrel::agent::LocalSampler;
    use kestrel::mcp::{HostOptions, McpHost, SamplerHandle};
    let (model, policy, approver) = sampling;
    let sampler = LocalSampler::new(model.clone(), policy.clone(), approver)?;
    let options = HostOptions {
        sampler: Some(SamplerHandle(std::sync::Arc::new(sampler))),
        ..HostOptions::from_config(config)
    };
    let host = std::sync::Arc::new(runtime.block_on(McpHost::start(config, options)));
    let on_interrupt = host.clone();
    runtime.spawn(async move {
        interrupted().await;
        on_interrupt.stop_all().await;
        eprintln!("\n{farewell}");
        std::process::exit(130);
    });
    Ok(host)
}
