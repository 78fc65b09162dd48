//! Client credentials with a signed assertion (RFC 7523 `private_key_jwt`): the client proves
//! who it is with a short-lived JWT signed by its own P-256 key (ES256) instead of a secret.
//!
//! The key is read from a PKCS#8 PEM file and signed with ring, the crypto library the TLS stack
//! already uses. The assertion names the client as issuer and subject and the authorization
//! server's issuer as audience, lives five minutes and carries a random id. The token that comes
//! back is sent as a plain bearer token for the connection.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use super::{OAuthError, OAuthSettings};

/// How long an assertion is valid.
const LIFETIME_SECS: u64 = 300;

/// A signed assertion for `client_id` to present to the authorization server `audience`.
pub(crate) fn assertion(client_id: &str, audience: &str, pem: &str) -> Result<String, String> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("the private key is not a PKCS#8 PEM key: {e}"))?;
    let random = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_pkcs8_der(),
        &random,
    )
    .map_err(|e| format!("the private key is not a PKCS#8 P-256 key: {e}"))?;
    let mut id = [0u8; 16];
    random
        .fill(&mut id)
        .map_err(|_| "no random numbers for the assertion's id".to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = json!({"alg": "ES256", "typ": "JWT"});
    let claims = json!({
        "iss": client_id, "sub": client_id, "aud": audience,
        "iat": now, "exp": now + LIFETIME_SECS,
        "jti": id.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key
        .sign(&random, signing_input.as_bytes())
        .map_err(|_| "signing the assertion failed".to_string())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    ))
}

/// `application/x-www-form-urlencoded` of `fields`.
fn form(fields: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// Exchanges a signed assertion for an access token for the server at `url`.
pub(crate) async fn exchange(
    url: &str,
    settings: &OAuthSettings,
    key_file: &std::path::Path,
) -> Result<String, OAuthError> {
    let Some(client_id) = &settings.client_id else {
        return Err(OAuthError::Settings(
            "`oauth.privateKeyFile` needs `oauth.clientId`".into(),
        ));
    };
    let pem = std::fs::read_to_string(key_file).map_err(|e| {
        OAuthError::Settings(format!(
            "cannot read `oauth.privateKeyFile` {}: {e}",
            key_file.display()
        ))
    })?;
    super::super::tls::ensure();
    let manager = rmcp::transport::auth::AuthorizationManager::new(url).await?;
    let metadata = manager.resolve_metadata().await?.metadata;
    let audience = metadata
        .issuer
        .clone()
        .unwrap_or_else(|| metadata.token_endpoint.clone());
    let signed = assertion(client_id, &audience, &pem).map_err(OAuthError::Settings)?;
    let scopes = settings.scopes.join(" ");
    let mut fields = vec![
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", signed.as_str()),
        ("resource", url),
    ];
    if !scopes.is_empty() {
        fields.push(("scope", scopes.as_str()));
    }
    let refused = |why: String| OAuthError::NotAuthorized(format!("the token endpoint {why}"));
    let response = reqwest::Client::new()
        .post(&metadata.token_endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(form(&fields))
        .send()
        .await
        .map_err(|e| refused(format!("cannot be reached: {e}")))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| refused(format!("answer was cut: {e}")))?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match answer["access_token"].as_str() {
        Some(token) if status.is_success() => Ok(token.to_string()),
        _ => Err(refused(format!(
            "refused the assertion ({status}): {}",
            String::from_utf8_lossy(&body)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair, UnparsedPublicKey};

    #[test]
    fn assertions_are_es256_jwts_for_the_client_and_audience() {
        let random = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random).expect("key");
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(pkcs8.as_ref())
        );
        let jwt = assertion("kestrel", "https://as.example", &pem).expect("signed");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(
            (&claims["iss"], &claims["sub"]),
            (&json!("kestrel"), &json!("kestrel"))
        );
        assert_eq!(claims["aud"], "https://as.example");
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &random)
                .expect("key");
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref());
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
        let signed = format!("{}.{}", parts[0], parts[1]);
        public
            .verify(signed.as_bytes(), &signature)
            .expect("valid signature");
        assert!(assertion("kestrel", "x", "not a key").is_err());
    }

    #[test]
    fn forms_are_percent_encoded() {
        assert_eq!(form(&[("a b", "x:y/z"), ("c", "d")]), "a+b=x%3Ay%2Fz&c=d");
    }
}
