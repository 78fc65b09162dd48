//! Signatures on the reasoning the server hands out, so that what a client sends back can be put
//! into the prompt as the model's own thinking.
//!
//! Anthropic's `thinking` blocks carry a `signature` that must come back unchanged. Here it is an
//! HMAC-SHA256 of the thinking text under a key kept in the user's cache directory (created once,
//! mode 0600), so signatures stay valid across restarts of the server on the same machine; a
//! block whose text was changed is refused rather than fed to the model as its own reasoning.

use std::path::PathBuf;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature's prefix, naming the scheme.
const SCHEME: &str = "ks1.";

/// Signs and checks reasoning text.
pub(super) struct Signer {
    key: [u8; 32],
}

impl Signer {
    /// The key from the cache directory, created there if missing; a key for this process only
    /// (with a warning) when it cannot be stored.
    pub(super) fn load() -> Self {
        let path = key_path();
        match path.as_ref().map(|p| read_or_create(p)) {
            Some(Ok(key)) => Self { key },
            other => {
                let why = match other {
                    Some(Err(e)) => e,
                    _ => "no cache directory".into(),
                };
                tracing::warn!("reasoning signatures will last only while this server runs: {why}");
                Self { key: random_key() }
            }
        }
    }

    /// A signer with `key` (tests).
    #[cfg(test)]
    pub(super) fn with_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self, text: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any size");
        mac.update(text.as_bytes());
        mac
    }

    /// The signature of `text`.
    pub(super) fn sign(&self, text: &str) -> String {
        let bytes = self.mac(text).finalize().into_bytes();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{SCHEME}{hex}")
    }

    /// Whether `signature` is this server's signature of `text` (compared in constant time).
    pub(super) fn verify(&self, text: &str, signature: &str) -> bool {
        let Some(hex) = signature.strip_prefix(SCHEME) else {
            return false;
        };
        let Some(bytes) = decode_hex(hex) else {
            return false;
        };
        self.mac(text).verify_slice(&bytes).is_ok()
    }
}

impl Signer {
    /// `text` sealed: its signature and the text itself, hex-encoded, as one opaque string.
    pub(super) fn seal(&self, text: &str) -> String {
        let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}.{hex}", self.sign(text))
    }

    /// The text of a sealed string, if the seal is this server's and holds.
    pub(super) fn open(&self, sealed: &str) -> Option<String> {
        let (signature, hex) = sealed.rsplit_once('.')?;
        let text = String::from_utf8(decode_hex(hex)?).ok()?;
        self.verify(&text, signature).then_some(text)
    }
}

fn key_path() -> Option<PathBuf> {
    Some(dirs::cache_dir()?.join("kestrel").join("serve-signing-key"))
}

fn read_or_create(path: &std::path::Path) -> Result<[u8; 32], String> {
    if let Ok(bytes) = std::fs::read(path) {
        return bytes
            .try_into()
            .map_err(|_| format!("{} is not a 32-byte key", path.display()));
    }
    let key = random_key();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write_private(path, &key).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, key: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(key)
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, key: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, key)
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    // Without an entropy source the process could not have started its TLS or hashing either.
    getrandom::fill(&mut key).expect("the operating system's random source");
    key
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_text_only() {
        let signer = Signer::with_key([7; 32]);
        let signature = signer.sign("I should add 2 and 2.");
        assert!(signature.starts_with("ks1.") && signature.len() == 4 + 64);
        assert!(signer.verify("I should add 2 and 2.", &signature));
        assert!(!signer.verify("I should add 2 and 3.", &signature));
        assert!(!Signer::with_key([8; 32]).verify("I should add 2 and 2.", &signature));
        for bad in ["", "ks1.", "ks1.zz", "EqQKCkYIBRgCKkA", &signature[..20]] {
            assert!(!signer.verify("I should add 2 and 2.", bad), "{bad}");
        }
        let sealed = signer.seal("Plan: é, then ✓.");
        assert_eq!(signer.open(&sealed).as_deref(), Some("Plan: é, then ✓."));
        let forged = format!("{}{}", &sealed[..sealed.len() - 2], "21");
        assert_eq!(signer.open(&forged), None);
        assert_eq!(Signer::with_key([8; 32]).open(&sealed), None);
    }
}
