//! Credentials: argon2id password hashes for users, random API tokens stored as SHA-256 hashes.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::distr::Alphanumeric;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand::RngExt;
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

/// The work area of one argon2 computation (~19 MiB with the default parameters), kept by a
/// caller that hashes again and again so the memory is reused instead of allocated and freed
/// each time, and [released](HashMemory::release) when the caller goes idle.
///
/// The `ddms` binary allocates with jemalloc, which returns a released area to the system
/// within its decay time. Under glibc's malloc (the library's tests, other embedders) the area
/// is reserved larger than the largest mmap threshold (32 MiB on 64-bit,
/// `DEFAULT_MMAP_THRESHOLD_MAX` in mallopt(3)), so malloc maps it on its own and unmaps it when
/// it is freed; at 19 MiB it came from the heap once the threshold had adapted upwards, and
/// freed areas stayed in malloc's arenas (a login flood grew the process by a gigabyte that
/// way). Only the pages argon2 writes (the 19 MiB) count towards resident memory.
#[derive(Default)]
pub struct HashMemory(Vec<Block>);

/// Bytes reserved for a work area: past the mmap threshold's ceiling (see [`HashMemory`]).
const WORK_AREA_RESERVE: usize = 33 << 20;

impl HashMemory {
    fn blocks(&mut self, params: &Params) -> &mut [Block] {
        let count = params.block_count();
        if self.0.len() < count {
            let reserve = count.max(WORK_AREA_RESERVE / std::mem::size_of::<Block>());
            self.0.reserve_exact(reserve - self.0.len());
            self.0.resize(count, Block::default());
        }
        &mut self.0[..count]
    }

    /// Argon2 of `password` with `salt` into `out`, computed in this work area: the one place
    /// hashing and verification both run.
    fn hash_into(
        &mut self,
        argon2: &Argon2<'_>,
        params: &Params,
        password: &str,
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), argon2::Error> {
        argon2.hash_password_into_with_memory(password.as_bytes(), salt, out, self.blocks(params))
    }

    /// Gives the work area back (the next hash allocates it again).
    pub fn release(&mut self) {
        self.0 = Vec::new();
    }
}

/// Hashes with argon2id and the crate's default (OWASP-recommended) parameters.
pub fn hash_password(password: &str) -> Result<String, CredentialError> {
    hash_password_in(&mut HashMemory::default(), password)
}

/// [`hash_password`] in a reused work area.
pub fn hash_password_in(
    memory: &mut HashMemory,
    password: &str,
) -> Result<String, CredentialError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(CredentialError::PasswordTooShort {
            min: MIN_PASSWORD_LEN,
        });
    }
    let fail = |e: &dyn std::fmt::Display| CredentialError::Hash(e.to_string());
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(|e| fail(&e))?;
    let params = Params::default();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    memory
        .hash_into(&argon2, &params, password, salt_bytes, &mut out)
        .map_err(|e| fail(&e))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| fail(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| fail(&e))?),
    };
    Ok(hash.to_string())
}

pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    verify_password_in(&mut HashMemory::default(), password, stored_hash)
}

/// [`verify_password`] in a reused work area: the stored hash's own algorithm, version and
/// parameters, compared in constant time (`Output`'s equality).
pub fn verify_password_in(memory: &mut HashMemory, password: &str, stored_hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored_hash) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let Ok(version) = parsed
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params.clone());
    memory
        .hash_into(&argon2, &params, password, salt_bytes, &mut out)
        .is_ok()
        && Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// A random secret of `len` alphanumeric characters from the OS generator.
pub fn random_secret(len: usize) -> String {
    // The OS generator directly; a failure to read from it panics, as `OsRng` did.
    UnwrapErr(SysRng)
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
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn hashes_in_a_reused_work_area_agree_with_the_argon2_crate_both_ways() {
        let mut memory = HashMemory::default();
        let ours = hash_password_in(&mut memory, "correct horse battery").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse battery", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"correct horse batterY", &parsed)
            .is_err());

        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"another long password", &salt)
            .unwrap()
            .to_string();
        assert!(verify_password_in(
            &mut memory,
            "another long password",
            &theirs
        ));
        assert!(!verify_password_in(
            &mut memory,
            "another long passwore",
            &theirs
        ));
        assert!(!verify_password_in(
            &mut memory,
            "another long password",
            "$argon2id$v=19$junk"
        ));
        assert!(!verify_password_in(
            &mut memory,
            "another long password",
            ""
        ));
    }

    #[test]
    fn the_work_area_is_allocated_once_and_reused() {
        let mut memory = HashMemory::default();
        let first = hash_password_in(&mut memory, "a password of some length").unwrap();
        let area = memory.0.as_ptr();
        assert!(verify_password_in(
            &mut memory,
            "a password of some length",
            &first
        ));
        hash_password_in(&mut memory, "a password of some length").unwrap();
        assert_eq!(
            memory.0.as_ptr(),
            area,
            "the work area moved: it was allocated again"
        );
        assert_eq!(memory.0.len(), Params::default().block_count());
    }

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
