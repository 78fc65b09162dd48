//! Where a server's OAuth tokens live: one JSON file per server (named after the server and a
//! hash of its URL, so a changed URL never reuses a token) in Kestrel's config directory, written
//! with mode 0600 and replaced atomically. The file also keeps the client secret a dynamic
//! registration returned, which rmcp's stored credentials leave out and a confidential client
//! needs to refresh. Tokens never reach logs or transcripts: nothing here prints them.

use std::path::{Path, PathBuf};

use rmcp::transport::auth::{AuthError, CredentialStore, StoredCredentials};
use serde::{Deserialize, Serialize};

/// What the file holds.
#[derive(Debug, Serialize, Deserialize)]
struct TokenFile {
    credentials: StoredCredentials,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
}

/// A server's token file.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    /// The file for server `name` at `url` under `dir`.
    pub fn new(dir: &Path, name: &str, url: &str) -> Self {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            path: dir.join(format!("{safe}-{:016x}.json", fnv1a(url.as_bytes()))),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a login left tokens here.
    pub fn has_tokens(&self) -> bool {
        self.read()
            .is_some_and(|f| f.credentials.token_response.is_some())
    }

    /// The client secret kept beside the tokens, if any.
    pub fn client_secret(&self) -> Option<String> {
        self.read().and_then(|f| f.client_secret)
    }

    /// Keeps `secret` with the tokens (written with the next save, or now if there are tokens).
    pub fn set_client_secret(&self, secret: Option<String>) -> Result<(), AuthError> {
        if let Some(mut file) = self.read() {
            file.client_secret = secret;
            return self.write(&file);
        }
        // No file yet: the first save writes it; keep the secret until then.
        let placeholder = TokenFile {
            credentials: StoredCredentials::new(String::new(), None, Vec::new(), None),
            client_secret: secret,
        };
        self.write(&placeholder)
    }

    /// Deletes the file; `Ok(false)` when there was none.
    pub fn remove(&self) -> std::io::Result<bool> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn read(&self) -> Option<TokenFile> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write(&self, file: &TokenFile) -> Result<(), AuthError> {
        let failed = |e: std::io::Error| {
            AuthError::InternalError(format!("cannot write {}: {e}", self.path.display()))
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let text = serde_json::to_string_pretty(file)
            .map_err(|e| AuthError::InternalError(format!("cannot encode the tokens: {e}")))?;
        let temporary = self.path.with_extension("json.tmp");
        write_private(&temporary, text.as_bytes()).map_err(failed)?;
        std::fs::rename(&temporary, &self.path).map_err(failed)
    }
}

/// Writes `bytes` to a new file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        // A file left by an older run keeps its mode through `open`; set it.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

/// A stable 64-bit hash (FNV-1a), for file names only.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[async_trait::async_trait]
impl CredentialStore for TokenStore {
    async fn load(&self) -> Result<Option<StoredCredentials>, AuthError> {
        Ok(self
            .read()
            .map(|f| f.credentials)
            .filter(|c| !c.client_id.is_empty()))
    }

    async fn save(&self, credentials: StoredCredentials) -> Result<(), AuthError> {
        let client_secret = self.read().and_then(|f| f.client_secret);
        self.write(&TokenFile {
            credentials,
            client_secret,
        })
    }

    async fn clear(&self) -> Result<(), AuthError> {
        self.remove().map(|_| ()).map_err(|e| {
            AuthError::InternalError(format!("cannot remove {}: {e}", self.path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_kept_private_per_server_and_url() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = TokenStore::new(dir.path(), "my server", "https://a.example/mcp");
        let other = TokenStore::new(dir.path(), "my server", "https://b.example/mcp");
        assert_ne!(store.path(), other.path());
        assert!(store.path().starts_with(dir.path()));
        assert!(!store.has_tokens());
        assert!(store.load().await.expect("load").is_none());

        store
            .set_client_secret(Some("s3cret".into()))
            .expect("secret");
        let token: rmcp::transport::auth::OAuthTokenResponse = serde_json::from_value(
            serde_json::json!({"access_token": "at", "token_type": "Bearer", "expires_in": 60}),
        )
        .expect("token");
        let saved =
            StoredCredentials::new("client".into(), Some(token), vec!["read".into()], Some(1));
        store.save(saved).await.expect("save");
        assert!(store.has_tokens());
        assert_eq!(store.client_secret().as_deref(), Some("s3cret"));
        let loaded = store.load().await.expect("load").expect("credentials");
        assert_eq!(loaded.client_id, "client");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        store.clear().await.expect("clear");
        assert!(!store.has_tokens());
        assert!(!store.remove().expect("remove"));
    }
}
