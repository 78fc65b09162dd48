//! The TLS crypto provider (ring), installed once before any HTTP client is built: reqwest is
//! built without a provider of its own, and both Streamable HTTP connections and OAuth requests
//! need one.

static PROVIDER: std::sync::Once = std::sync::Once::new();

/// Installs the provider; later calls do nothing.
pub(crate) fn ensure() {
    PROVIDER.call_once(|| {
        // Another part of the process may have installed one first; either serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
