//! How a connection gets a server's OAuth credentials: the client credentials grant when the
//! configuration asks for it, else the tokens a login left in the server's token file; when the
//! server still answers 401, a login through the host's [`Authorizer`](super::oauth::Authorizer)
//! if it has one (a person at `chat`, a test), else an error naming `kestrel mcp login`, so an
//! unattended run never waits for a browser.

use rmcp::transport::auth::{AuthorizationManager, InMemoryCredentialStore};

use super::config::{ServerConfig, Transport};
use super::oauth::{self, Grant, OAuthSettings, SharedAuth, StoreChoice, TokenStore};
use super::options::HostOptions;

/// What a connection starts with.
pub(crate) enum Credentials {
    /// Nothing yet (the server may not need any).
    None,
    /// A manager holding tokens, which it refreshes.
    Manager(Box<AuthorizationManager>),
    /// A token sent as it is.
    Bearer(String),
}

/// The credentials to connect with before the server has asked for any.
pub(crate) async fn existing(
    config: &ServerConfig,
    url: &str,
    settings: &OAuthSettings,
    options: &HostOptions,
) -> Result<Credentials, String> {
    let failed = |e: oauth::OAuthError| format!("OAuth client credentials for {url}: {e}");
    if settings.grant == Grant::ClientCredentials {
        if settings.private_key_file.is_some() {
            let token = oauth::client_assertion_token(url, settings).await;
            return token.map(Credentials::Bearer).map_err(failed);
        }
        let manager = oauth::client_credentials(url, settings).await;
        return manager
            .map(|m| Credentials::Manager(Box::new(m)))
            .map_err(failed);
    }
    let Some(dir) = &options.oauth_dir else {
        return Ok(Credentials::None);
    };
    let store = TokenStore::new(dir, &config.name, url);
    let manager = oauth::from_store(url, &store, url).await.map_err(|e| {
        format!(
            "the stored OAuth tokens for {url} ({}) cannot be used: {e}; run `kestrel mcp login {}` again",
            store.path().display(),
            config.name
        )
    })?;
    Ok(manager.map_or(Credentials::None, |m| Credentials::Manager(Box::new(m))))
}

/// The server answered `challenge` (its `WWW-Authenticate` header): logs in if the host can.
pub(crate) async fn on_challenge(
    config: &ServerConfig,
    url: &str,
    settings: &OAuthSettings,
    challenge: &str,
    options: &HostOptions,
) -> Result<AuthorizationManager, String> {
    let Some(authorizer) = &options.authorizer else {
        return Err(format!(
            "{url} requires an OAuth login: run `kestrel mcp login {}` once",
            config.name
        ));
    };
    let store = match &options.oauth_dir {
        Some(dir) => StoreChoice::File(TokenStore::new(dir, &config.name, url)),
        None => StoreChoice::Memory(InMemoryCredentialStore::new()),
    };
    oauth::log_in(
        &config.name,
        url,
        settings,
        Some(challenge),
        store,
        authorizer.0.as_ref(),
    )
    .await
    .map_err(|e| format!("OAuth login to {url} failed: {e}"))
}

/// Most logins one request may start (a server that keeps refusing is not asked forever).
pub(crate) const MAX_LOGINS: usize = 3;

/// A live connection's request was refused with `challenge`: logs in again (asking for the
/// scopes it names) and puts the new token in place for the connection's client.
pub(crate) async fn again(
    config: &ServerConfig,
    challenge: &str,
    options: &HostOptions,
    auth: Option<&SharedAuth>,
) -> Result<(), String> {
    let Transport::Http { url, oauth, .. } = &config.transport else {
        return Err(format!("refused for want of authorization: {challenge}"));
    };
    let Some(auth) = auth else {
        return Err(format!(
            "{url} refused the request for want of authorization; run `kestrel mcp login {}`",
            config.name
        ));
    };
    let settings = oauth.clone().unwrap_or_default();
    let manager = on_challenge(config, url, &settings, challenge, options).await?;
    *auth.lock().await = manager;
    Ok(())
}
