//! Console configuration and the credential helpers the demo and the CLI use.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Bytes of randomness in a generated API token (hex-encoded, so twice as many characters).
pub const API_TOKEN_BYTES: usize = 32;

/// An API token the CLI or automation presents as `Authorization: Bearer <token>`.
///
/// Only the BLAKE3 hash of the token is kept in config: the token itself has 256 bits of
/// entropy, so a fast hash suffices (a slow password hash would cost every API call).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Name shown in the event log as `token:<name>`.
    pub name: String,
    /// `hash_token(token)`: 64 lowercase hex characters.
    pub blake3_hex: String,
}

/// Console settings; the node builds this from its config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsoleConfig {
    /// Administrator login name.
    pub admin_user: String,
    /// Argon2 PHC string of the administrator password (see [`hash_password`]).
    /// Empty disables password login.
    pub admin_password_argon2: String,
    /// API tokens.
    pub api_tokens: Vec<ApiToken>,
    /// Set the `Secure` cookie attribute (enable whenever the console is served over TLS).
    pub cookie_secure: bool,
    /// A session ends this long after its last request, in seconds.
    pub session_idle_s: u64,
    /// A session ends this long after login regardless of use, in seconds.
    pub session_lifetime_s: u64,
    /// Most sessions kept at once; the oldest is dropped beyond this.
    pub sessions_max: usize,
    /// Failed logins allowed per client address per minute before answering 429.
    pub login_failures_per_ip_per_min_max: u32,
    /// Failed logins allowed in total per minute before answering 429 to everyone.
    pub login_failures_global_per_min_max: u32,
    /// Require authentication for `/metrics` (Prometheus scrapes are usually anonymous).
    pub metrics_require_auth: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            admin_user: "admin".to_string(),
            admin_password_argon2: String::new(),
            api_tokens: Vec::new(),
            cookie_secure: false,
            session_idle_s: 30 * 60,
            session_lifetime_s: 12 * 60 * 60,
            sessions_max: 64,
            login_failures_per_ip_per_min_max: 5,
            login_failures_global_per_min_max: 20,
            metrics_require_auth: false,
        }
    }
}

/// Errors from the credential helpers.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Hashing failed (should not happen with default parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Hash a password for `admin_password_argon2` (Argon2id, default parameters, random salt).
pub fn hash_password(password: &str) -> Result<String, CredentialError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CredentialError::Hash(e.to_string()))
}

/// Check a password against a PHC string; a malformed hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Generate a fresh random API token (give it to the client; store only [`hash_token`]).
pub fn generate_token() -> String {
    random_hex(API_TOKEN_BYTES)
}

/// The hash of a token as stored in [`ApiToken::blake3_hex`].
pub fn hash_token(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// `bytes` random bytes from the OS generator, hex-encoded.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    let mut out = String::with_capacity(bytes * 2);
    for b in buf {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong", &phc));
        assert!(!verify_password("correct horse", "not a hash"));
        assert!(!verify_password("", ""));
    }

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let a = generate_token();
        let b = generate_token();
        assert_eq!(a.len(), API_TOKEN_BYTES * 2);
        assert_ne!(a, b);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
