//! `kestrel mcp serve`: the agent offered to other MCP hosts (see [`kestrel::task_server`]), over
//! stdio, or MCP's Streamable HTTP at `/mcp` with `--port`.
//!
//! Over stdio, standard output is the protocol's: everything else (warnings, logs) goes to
//! stderr, and the server ends when its host closes standard input.

use std::sync::Arc;

use anyhow::Context;
use kestrel::mcp::ElicitationHandle;
use kestrel::task_server::TaskServer;
use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::args::McpServeArgs;
use crate::loading::start_engine;
use crate::options::{config, options};
use crate::startup::{HostSetup, Services, next_signal};

/// Serves until the host hangs up (stdio) or a signal (HTTP).
pub fn run(args: &McpServeArgs) -> anyhow::Result<()> {
    let options = options(&args.agent)?;
    let mut config = config(args.agent.config.as_ref())?;
    config.sandbox_servers |= args.agent.sandbox_servers;
    let concurrency = usize::from(args.concurrency);
    let backend = start_engine(&args.model, &args.engine, concurrency)?;
    let services = Services::start(
        &config,
        HostSetup {
            sampling: Some((&backend, &options.approval, None)),
            elicitation: args.agent.elicit.map(ElicitationHandle::from),
            ..HostSetup::default()
        },
        "stopped",
    )?;
    services.warn_unavailable();
    let runtime = services.runtime.handle().clone();
    let server = TaskServer::new(
        backend,
        services.host.clone(),
        runtime.clone(),
        options,
        concurrency,
    );
    let served = services.runtime.block_on(async {
        match args.port {
            None => {
                let running = server
                    .serve(rmcp::transport::stdio())
                    .await
                    .context("the MCP session did not start")?;
                running.waiting().await.context("the MCP session failed")?;
            }
            Some(port) => {
                let service = StreamableHttpService::new(
                    move || Ok(server.clone()),
                    Arc::new(LocalSessionManager::default()),
                    StreamableHttpServerConfig::default(),
                );
                let address = format!("{}:{port}", args.host);
                let listener = tokio::net::TcpListener::bind(&address)
                    .await
                    .with_context(|| format!("cannot listen on {address}"))?;
                eprintln!("serving MCP on http://{}/mcp", listener.local_addr()?);
                let router = axum::Router::new().nest_service("/mcp", service);
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        next_signal().await;
                    })
                    .await
                    .context("the server failed")?;
            }
        }
        anyhow::Ok(())
    });
    services.shutdown();
    served
}
