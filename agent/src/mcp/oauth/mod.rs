//! OAuth 2.1 for Streamable HTTP servers, on rmcp's `auth` support.
//!
//! A server answering 401 with `WWW-Authenticate` needs a login: discovery of its protected
//! resource metadata and authorization server (RFC 9728, RFC 8414, OpenID Connect, the 2025-03-26
//! fallbacks), a client (pre-registered in the configuration, a Client ID Metadata Document URL,
//! or dynamic registration), the authorization code flow with PKCE and the resource indicator,
//! and the token exchange with whichever client authentication the server lists. The person's
//! part (opening a page, coming back through the redirect) is an [`Authorizer`]'s: `kestrel mcp
//! login` brings one, and a host given one logs in when a server asks; without one a server that
//! needs a login fails to start, naming the command to run. Tokens live in a [`TokenStore`] and
//! are refreshed by rmcp before they expire. The client credentials grant needs no person and
//! runs at every connection when the configuration asks for it.

mod jwt;
mod store;

use std::sync::Arc;

use futures::future::BoxFuture;
use rmcp::transport::auth::{
    AuthClient, AuthError, AuthorizationCallback, AuthorizationManager, ClientCredentialsConfig,
    CredentialStore, InMemoryCredentialStore, OAuthClientConfig, OAuthState,
};
use serde::Deserialize;

pub use store::TokenStore;

/// A server's `oauth` settings (`{"clientId", "clientSecret", "scopes", "redirectPort",
/// "clientMetadataUrl", "grant"}`, as other hosts spell them). All are optional: without any,
/// a login discovers everything and registers a client itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OAuthSettings {
    /// A client registered with the authorization server beforehand.
    pub client_id: Option<String>,
    /// That client's secret (a confidential client).
    pub client_secret: Option<String>,
    /// Scopes to ask for (default: what the server's metadata and challenge name).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The loopback port of the login's redirect (a pre-registered client's redirect URI names
    /// one; default: any free port).
    pub redirect_port: Option<u16>,
    /// An https URL of this client's metadata document, used as its client id where the
    /// authorization server supports that.
    pub client_metadata_url: Option<String>,
    /// `authorization_code` (a person logs in; the default) or `client_credentials` (the client
    /// id and its secret or key are the credentials; nobody logs in).
    #[serde(default)]
    pub grant: Grant,
    /// With `client_credentials`: a PKCS#8 PEM file of the client's P-256 key, which signs an
    /// assertion (`private_key_jwt`, ES256) instead of sending a secret.
    pub private_key_file: Option<std::path::PathBuf>,
}

/// Which OAuth grant a server's login uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// A person authorizes in a browser.
    #[default]
    AuthorizationCode,
    /// The configured client id and secret are exchanged for a token.
    ClientCredentials,
}

/// The person's part of a login.
pub trait Authorizer: Send + Sync {
    /// Where the authorization server sends the browser back (registered with the client).
    fn redirect_uri(&self) -> String;

    /// Shows `page` (the authorization URL for `server`) and returns the URL the browser was
    /// redirected to, which carries the code and state.
    fn authorize(&self, server: &str, page: &str) -> BoxFuture<'_, Result<String, String>>;
}

/// A shared [`Authorizer`] (a named type so host options stay `Debug` and `Clone`).
#[derive(Clone)]
pub struct AuthorizerHandle(pub Arc<dyn Authorizer>);

impl std::fmt::Debug for AuthorizerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthorizerHandle")
    }
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The authorization server or the protocol refused (rmcp's error, as it says it).
    #[error("{0}")]
    Protocol(#[from] AuthError),
    /// The person's part failed or was abandoned.
    #[error("authorization was not completed: {0}")]
    NotAuthorized(String),
    /// The configuration lacks what the grant needs.
    #[error("{0}")]
    Settings(String),
}

/// The `scope` a `WWW-Authenticate` challenge names, if any.
pub fn challenge_scope(challenge: &str) -> Option<&str> {
    let start = challenge.find("scope=\"")? + "scope=\"".len();
    let rest = &challenge[start..];
    Some(&rest[..rest.find('"')?])
}

/// A manager for `url` keeping its credentials in `store`.
async fn manager_with<S: CredentialStore + 'static>(
    url: &str,
    store: S,
) -> Result<AuthorizationManager, OAuthError> {
    super::tls::ensure();
    let mut manager = AuthorizationManager::new(url).await?;
    manager.set_credential_store(store);
    Ok(manager)
}

/// Logs in to the server at `url` (named `server`) and returns the authorized manager; tokens
/// (and a registered client's secret) go to `store`. `challenge` is the server's
/// `WWW-Authenticate` header when a request brought one; `scopes` adds to what it names (a
/// step-up).
pub async fn log_in(
    server: &str,
    url: &str,
    settings: &OAuthSettings,
    challenge: Option<&str>,
    store: StoreChoice,
    authorizer: &dyn Authorizer,
) -> Result<AuthorizationManager, OAuthError> {
    let mut manager = match &store {
        StoreChoice::File(file) => manager_with(url, file.clone()).await?,
        StoreChoice::Memory(memory) => manager_with(url, memory.clone()).await?,
    };
    let metadata = manager.resolve_metadata_from_challenge(challenge).await?;
    let supports_cimd = metadata
        .metadata
        .additional_fields
        .get("client_id_metadata_document_supported")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    manager.set_metadata(metadata.metadata);
    let defaults: Vec<&str> = settings.scopes.iter().map(String::as_str).collect();
    let scopes = manager.select_scopes(challenge.and_then(challenge_scope), &defaults);
    let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let redirect_uri = authorizer.redirect_uri();
    let client = match (&settings.client_id, &settings.client_metadata_url) {
        (Some(id), _) => {
            let mut config = OAuthClientConfig::new(id.clone(), redirect_uri.clone());
            config.client_secret = settings.client_secret.clone();
            config.scopes = scopes.clone();
            config
        }
        (None, Some(document)) if supports_cimd => {
            let mut config = OAuthClientConfig::new(document.clone(), redirect_uri.clone());
            config.scopes = scopes.clone();
            config
        }
        _ => {
            manager
                .register_client("Kestrel", &redirect_uri, &scope_refs)
                .await?
        }
    };
    let secret = client.client_secret.clone();
    manager.configure_client(client)?;
    let page = manager.get_authorization_url(&scope_refs).await?;
    let back = authorizer
        .authorize(server, &page)
        .await
        .map_err(OAuthError::NotAuthorized)?;
    let callback = AuthorizationCallback::from_redirect_url(&back)?;
    manager
        .exchange_code_for_token_with_issuer(
            &callback.code,
            &callback.csrf_token,
            callback.issuer.as_deref(),
        )
        .await?;
    if let StoreChoice::File(file) = &store
        && settings.client_id.is_none()
    {
        file.set_client_secret(secret)?;
    }
    Ok(manager)
}

/// Exchanges the configured client's signed assertion for an access token (client credentials
/// with `private_key_jwt`); the token is sent as it is for the connection.
pub async fn client_assertion_token(
    url: &str,
    settings: &OAuthSettings,
) -> Result<String, OAuthError> {
    let Some(key_file) = &settings.private_key_file else {
        return Err(OAuthError::Settings(
            "`oauth.privateKeyFile` is not set".into(),
        ));
    };
    jwt::exchange(url, settings, key_file).await
}

/// Exchanges the configured client id and secret for a token (client credentials grant).
pub async fn client_credentials(
    url: &str,
    settings: &OAuthSettings,
) -> Result<AuthorizationManager, OAuthError> {
    let (Some(client_id), Some(client_secret)) = (&settings.client_id, &settings.client_secret)
    else {
        return Err(OAuthError::Settings(
            "`oauth.grant` \"client_credentials\" needs `clientId` and `clientSecret`".into(),
        ));
    };
    let manager = manager_with(url, InMemoryCredentialStore::new()).await?;
    let mut state = OAuthState::Unauthorized(manager);
    state
        .authenticate_client_credentials(ClientCredentialsConfig::ClientSecret {
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            scopes: settings.scopes.clone(),
            resource: Some(url.to_string()),
        })
        .await?;
    state.into_authorization_manager().ok_or_else(|| {
        OAuthError::Settings("the client credentials exchange left no authorized client".into())
    })
}

/// A manager for `url` with the tokens a login left in `store`, or `None` when there are none.
pub async fn from_store(
    url: &str,
    store: &TokenStore,
    redirect_uri: &str,
) -> Result<Option<AuthorizationManager>, OAuthError> {
    if !store.has_tokens() {
        return Ok(None);
    }
    let mut manager = manager_with(url, store.clone()).await?;
    if !manager.initialize_from_store().await? {
        return Ok(None);
    }
    // rmcp keeps no client secret with the tokens; a confidential client needs it to refresh.
    if let (Some(secret), Some(stored)) = (store.client_secret(), store.load().await?) {
        let mut config = OAuthClientConfig::new(stored.client_id, redirect_uri.to_string());
        config.client_secret = Some(secret);
        manager.configure_client(config)?;
    }
    Ok(Some(manager))
}

/// An OAuth manager shared with the HTTP client that sends its token (so a login mid-session
/// can put a new token in place).
pub(crate) type SharedAuth = Arc<tokio::sync::Mutex<AuthorizationManager>>;

/// Where a login keeps its tokens.
#[derive(Clone)]
pub enum StoreChoice {
    /// The server's token file (`kestrel mcp login`, and hosts that log in).
    File(TokenStore),
    /// This process only.
    Memory(InMemoryCredentialStore),
}

/// An HTTP client that sends the manager's token with every request (refreshing it first when
/// it is about to expire).
pub fn authorized_client(manager: AuthorizationManager) -> AuthClient<reqwest::Client> {
    AuthClient::new(reqwest::Client::default(), manager)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_use_the_spelling_of_other_hosts_and_refuse_unknown_fields() {
        let settings: OAuthSettings = serde_json::from_value(serde_json::json!({
            "clientId": "kestrel", "scopes": ["read"], "redirectPort": 8765,
            "grant": "client_credentials", "clientSecret": "s"
        }))
        .expect("settings");
        assert_eq!(settings.client_id.as_deref(), Some("kestrel"));
        assert_eq!(settings.redirect_port, Some(8765));
        assert_eq!(settings.grant, Grant::ClientCredentials);
        let unknown =
            serde_json::from_value::<OAuthSettings>(serde_json::json!({"client_id": "x"}));
        assert!(unknown.is_err_and(|e| e.to_string().contains("client_id")));
    }

    #[test]
    fn a_challenge_names_its_scope() {
        let challenge = r#"Bearer error="insufficient_scope", scope="mcp:basic mcp:write", resource_metadata="https://x/y""#;
        assert_eq!(challenge_scope(challenge), Some("mcp:basic mcp:write"));
        assert_eq!(challenge_scope(r#"Bearer error="invalid_token""#), None);
    }
}
