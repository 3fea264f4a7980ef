//! Credentials: argon2id password hashes for users, random API tokens stored as SHA-256 hashes.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};

/// Tokens carry this prefix so they are recognisable in logs and secret scanners.
pub const API_TOKEN_PREFIX: &str = "ddms_";

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("password must be at least {min} characters")]
    PasswordTooShort { min: usize },
    #[error("cannot hash password: {0}")]
    Hash(String),
}

pub const MIN_PASSWORD_LEN: usize = 12;

/// Hashes with argon2id and the crate's default (OWASP-recommended) parameters.
pub fn hash_password(password: &str) -> Result<String, CredentialError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(CredentialError::PasswordTooShort {
            min: MIN_PASSWORD_LEN,
        });
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CredentialError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random secret of `len` alphanumeric characters from the OS generator.
pub fn random_secret(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A new API token: ~190 bits of randomness, shown once, never stored in clear.
pub fn generate_api_token() -> String {
    format!("{API_TOKEN_PREFIX}{}", random_secret(32))
}

/// Tokens are high-entropy, so an unsalted fast hash is safe and lets each request find its
/// token with one indexed lookup (argon2 per request would be a denial-of-service lever).
pub fn hash_api_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `secret` is the one whose [`hash_api_token`] is `stored_hash` (MQTT device passwords,
/// which are stored the same way). The comparison takes the same time wherever the hashes differ.
pub fn secret_matches_hash(secret: &[u8], stored_hash: &str) -> bool {
    let computed = hex::encode(Sha256::digest(secret));
    computed.len() == stored_hash.len()
        && computed
            .bytes()
            .zip(stored_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_matches_only_its_own_hash() {
        let hash = hash_api_token("device-password");
        assert!(secret_matches_hash(b"device-password", &hash));
        assert!(!secret_matches_hash(b"device-passwore", &hash));
        assert!(!secret_matches_hash(b"", &hash));
        assert!(!secret_matches_hash(b"device-password", "short"));
    }

    #[test]
    fn password_hash_is_argon2id_and_verifies() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("wrong horse battery", &hash));
        assert!(!verify_password("anything", "not a hash"));
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(matches!(
            hash_password("short"),
            Err(CredentialError::PasswordTooShort { .. })
        ));
    }

    #[test]
    fn tokens_are_unique_prefixed_and_hashed() {
        let a = generate_api_token();
        let b = generate_api_token();
        assert_ne!(a, b);
        assert!(a.starts_with(API_TOKEN_PREFIX));
        assert_eq!(hash_api_token(&a).len(), 64);
        assert_ne!(hash_api_token(&a), hash_api_token(&b));
    }
}
