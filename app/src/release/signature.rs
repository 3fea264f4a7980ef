//! Release signatures: who built an artifact, not only whether it arrived intact.
//!
//! A host pins one minisign (ed25519) public key at `<root>/etc/ddms/release.pub`
//! ([`Layout::release_public_key`]). With a key pinned, `ddms release install` demands
//! `<artifact>.minisig` and verifies it over exactly the bytes of the private copy it also
//! hashes (one pass, [`Verifier`]), before anything is unpacked or run. Without one it installs
//! as before and says so in its output ([`SignatureCheck::Unchecked`]).
//!
//! The pin is a fixed host path, not a `DDMS_RELEASE_*` option or a ddms.toml key: `ddms
//! release` reads no application configuration, and the deploying machine's `DDMS_RELEASE_*`
//! variables reach the host (`cargo xtask deploy` forwards them), so an option would let
//! whoever ships an artifact also choose the key it is checked against.
//!
//! Only prehashed signatures (minisign ≥ 0.10's default, and what `cargo xtask sign` makes)
//! are accepted: they can be checked while streaming a ~50 MB artifact, and a legacy one would
//! need it all in memory.
//!
//! [`Layout::release_public_key`]: super::Layout::release_public_key

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use minisign_verify::{PublicKey, Signature, StreamVerifier};
use serde::{Deserialize, Serialize};

use super::ReleaseError;

/// The file a pinned key lives in, under `<root>/etc/ddms/`.
pub const PUBLIC_KEY_FILE: &str = "release.pub";

/// What `ddms release install` established about an artifact's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SignatureCheck {
    /// Signed by the pinned key, over the exact bytes installed.
    Verified {
        /// minisign's key id (as `minisign -G` prints it).
        key_id: String,
        public_key: PathBuf,
        signature: PathBuf,
        /// The signed comment (`timestamp:… file:…` from the signer).
        trusted_comment: String,
    },
    /// No key is pinned on this host: only the checksum was checked.
    Unchecked { reason: String },
}

/// The host's pinned release key.
#[derive(Debug, Clone)]
pub struct PinnedKey {
    key: PublicKey,
    key_id: String,
    path: PathBuf,
}

impl PinnedKey {
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads the pinned key at `path`. `Ok(None)` only when nothing at all is there: a file that
/// exists but cannot be read or parsed, or a dangling link, refuses every install (fail
/// closed) instead of silently turning the check off.
pub fn pinned_key(path: &Path) -> Result<Option<PinnedKey>, ReleaseError> {
    let invalid = |reason: String| ReleaseError::PublicKeyInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(invalid("a link to nothing".into()));
            }
            return Ok(None);
        }
        Err(e) => return Err(invalid(e.to_string())),
    };
    if !metadata.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    // Whoever can write the key chooses which releases this host runs as root.
    let mode = metadata.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(invalid(format!(
            "writable by group or others (mode {:o}); it must be writable by its owner only",
            mode & 0o7777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let (key, key_id) = parse_public_key(&text).map_err(invalid)?;
    Ok(Some(PinnedKey {
        key,
        key_id,
        path: path.to_path_buf(),
    }))
}

/// A minisign public key file (`untrusted comment: …` then the base64 key, as `minisign -G` and
/// `cargo xtask keygen` write it), or the bare base64 line (as `minisign -P` takes it).
fn parse_public_key(text: &str) -> Result<(PublicKey, String), String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = match lines.as_slice() {
        [] => return Err("empty".into()),
        [comment, key] if comment.starts_with("untrusted comment:") => *key,
        [key] if !key.starts_with("untrusted comment:") => *key,
        [_] => return Err("a comment line but no key".into()),
        _ => {
            return Err(
                "more than one key line: pin exactly one minisign public key (the `.pub` file)"
                    .into(),
            )
        }
    };
    let bytes = decode_base64(line, "the key")?;
    // 2 bytes of algorithm ("Ed"), 8 of key id, 32 of ed25519 key.
    if bytes.len() != 42 {
        return Err(format!(
            "the key is {} bytes, a minisign public key is 42",
            bytes.len()
        ));
    }
    let key = PublicKey::from_base64(line)
        .map_err(|e| format!("not a minisign ed25519 public key: {e}"))?;
    Ok((key, key_id(&bytes[2..10])))
}

/// A `.minisig` file read into memory (it is small; the artifact is what is streamed).
#[derive(Clone)]
pub struct ReleaseSignature {
    signature: Signature,
    key_id: String,
    path: PathBuf,
}

impl std::fmt::Debug for ReleaseSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseSignature")
            .field("key_id", &self.key_id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Reads `path`, the signature of `artifact`. A missing file is [`ReleaseError::SignatureMissing`].
pub fn read_signature(
    artifact: &Path,
    path: &Path,
    pinned: &PinnedKey,
) -> Result<ReleaseSignature, ReleaseError> {
    let text = ReleaseError::read_text(path, || ReleaseError::SignatureMissing {
        artifact: artifact.to_path_buf(),
        signature: path.to_path_buf(),
        key_id: pinned.key_id.clone(),
        key: pinned.path.clone(),
    })?;
    let (signature, key_id) =
        parse_signature(&text).map_err(|reason| ReleaseError::SignatureInvalid {
            artifact: artifact.to_path_buf(),
            signature: path.to_path_buf(),
            reason,
        })?;
    Ok(ReleaseSignature {
        signature,
        key_id,
        path: path.to_path_buf(),
    })
}

/// The four lines of a `.minisig` file: untrusted comment, signature, trusted comment, global
/// signature.
fn parse_signature(text: &str) -> Result<(Signature, String), String> {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() < 4 || lines[4..].iter().any(|l| !l.trim().is_empty()) {
        return Err(format!(
            "{} lines; a minisign signature has 4 (untrusted comment, signature, trusted \
             comment, global signature)",
            lines.len()
        ));
    }
    if !lines[0].starts_with("untrusted comment:") {
        return Err("the first line is not `untrusted comment: …`".into());
    }
    if !lines[2].starts_with("trusted comment: ") {
        return Err("the third line is not `trusted comment: …`".into());
    }
    let bytes = decode_base64(lines[1].trim(), "the signature line")?;
    // 2 bytes of algorithm, 8 of key id, 64 of ed25519 signature.
    if bytes.len() != 74 {
        return Err(format!(
            "the signature line is {} bytes, a minisign signature is 74",
            bytes.len()
        ));
    }
    match &bytes[..2] {
        b"ED" => {}
        b"Ed" => {
            return Err(
                "a legacy (not prehashed) minisign signature; sign with minisign 0.10 \
                 or later, or `cargo xtask sign`"
                    .into(),
            )
        }
        other => {
            return Err(format!(
                "unknown signature algorithm `{}`",
                String::from_utf8_lossy(other).escape_debug()
            ))
        }
    }
    let signature =
        Signature::decode(text).map_err(|e| format!("not a minisign signature: {e}"))?;
    Ok((signature, key_id(&bytes[2..10])))
}

fn decode_base64(line: &str, what: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|e| format!("{what} is not base64: {e}"))
}

/// minisign shows a key id as the little-endian 64-bit number, in upper-case hex.
fn key_id(bytes: &[u8]) -> String {
    bytes.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// The pinned key and the artifact's signature, checked against each other before any byte
/// of the artifact is read.
#[derive(Debug, Clone)]
pub struct Expected {
    pinned: PinnedKey,
    signature: ReleaseSignature,
    artifact: PathBuf,
}

impl Expected {
    /// Refuses a signature made with another key than the pinned one up front, naming both:
    /// the usual cause is a key rotation that reached the signer and not the host, or the
    /// other way round.
    pub fn new(
        pinned: PinnedKey,
        signature: ReleaseSignature,
        artifact: &Path,
    ) -> Result<Expected, ReleaseError> {
        if signature.key_id != pinned.key_id {
            return Err(ReleaseError::SignatureInvalid {
                artifact: artifact.to_path_buf(),
                signature: signature.path.clone(),
                reason: format!(
                    "signed with key {}, but this host pins key {} ({})",
                    signature.key_id,
                    pinned.key_id,
                    pinned.path.display()
                ),
            });
        }
        Ok(Expected {
            pinned,
            signature,
            artifact: artifact.to_path_buf(),
        })
    }

    /// A verifier to feed the artifact's bytes to, in order.
    pub fn verifier(&self) -> Result<Verifier<'_>, ReleaseError> {
        let stream = self
            .pinned
            .key
            .verify_stream(&self.signature.signature)
            .map_err(|e| self.invalid(e.to_string()))?;
        Ok(Verifier {
            stream,
            expected: self,
        })
    }

    fn invalid(&self, reason: String) -> ReleaseError {
        ReleaseError::SignatureInvalid {
            artifact: self.artifact.clone(),
            signature: self.signature.path.clone(),
            reason,
        }
    }
}

/// Verifies a signature over bytes fed to it in order.
pub struct Verifier<'a> {
    stream: StreamVerifier<'a>,
    expected: &'a Expected,
}

impl Verifier<'_> {
    pub fn update(&mut self, bytes: &[u8]) {
        self.stream.update(bytes);
    }

    /// Whether the signature covers exactly the bytes fed, and its trusted comment too.
    pub fn finish(mut self) -> Result<SignatureCheck, ReleaseError> {
        let expected = self.expected;
        self.stream.finalize().map_err(|e| {
            expected.invalid(format!(
                "{e}: the artifact was changed after it was signed, or the signature belongs \
                 to another artifact"
            ))
        })?;
        Ok(SignatureCheck::Verified {
            key_id: expected.pinned.key_id.clone(),
            public_key: expected.pinned.path.clone(),
            signature: expected.signature.path.clone(),
            trusted_comment: expected.signature.signature.trusted_comment().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // minisign's own published example (the `minisign-verify` documentation): a key and its
    // prehashed and legacy signatures of the four bytes `test`. Public test vectors only; no
    // secret key is in this repository.
    const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
    const PREHASHED: &str = "untrusted comment: signature from minisign secret key
RUQf6LRCGA9i559r3g7V1qNyJDApGip8MfqcadIgT9CuhV3EMhHoN1mGTkUidF/z7SrlQgXdy8ofjb7bNJJylDOocrCo8KLzZwo=
trusted comment: timestamp:1633700835\tfile:test\tprehashed
wLMDjy9FLAuxZ3q4NlEvkgtyhrr0gtTu6KC4KBJdITbbOeAi1zBIYo0v4iTgt8jJpIidRJnp94ABQkJAgAooBQ==
";
    const LEGACY: &str = "untrusted comment: signature from minisign secret key
RWQf6LRCGA9i59SLOFxz6NxvASXDJeRtuZykwQepbDEGt87ig1BNpWaVWuNrm73YiIiJbq71Wi+dP9eKL8OC351vwIasSSbXxwA=
trusted comment: timestamp:1555779966\tfile:test
QtKMXWyYcwdpZAlPF7tE2ENJkRd1ujvKjlj1m9RtHTBnZPa5WKU5uWRs5GoP5M/VqE81QFuMKI5k/SfNQUaOAA==
";

    fn write_key(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(PUBLIC_KEY_FILE);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn key_error(dir: &Path, text: &str, mode: u32) -> String {
        match pinned_key(&write_key(dir, text, mode)) {
            Err(e @ ReleaseError::PublicKeyInvalid { .. }) => e.to_string(),
            other => panic!("{text:?} (mode {mode:o}): {other:?}"),
        }
    }

    fn check(data: &[u8], chunks: usize, signature: &str) -> Result<SignatureCheck, ReleaseError> {
        let dir = tempfile::tempdir().unwrap();
        let key = pinned_key(&write_key(dir.path(), KEY, 0o644))
            .unwrap()
            .unwrap();
        let sig_path = dir.path().join("test.minisig");
        std::fs::write(&sig_path, signature).unwrap();
        let artifact = dir.path().join("test");
        let signature = read_signature(&artifact, &sig_path, &key)?;
        let expected = Expected::new(key, signature, &artifact)?;
        let mut verifier = expected.verifier()?;
        for chunk in data.chunks(data.len().div_ceil(chunks).max(1)) {
            verifier.update(chunk);
        }
        verifier.finish()
    }

    #[test]
    fn key_files_are_read_with_or_without_their_comment_and_show_minisigns_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let with_comment =
            format!("untrusted comment: minisign public key E7620F1842B4E81F\n{KEY}\n");
        for text in [with_comment.as_str(), KEY, &format!("\n  {KEY}  \n\n")] {
            let key = pinned_key(&write_key(dir.path(), text, 0o644))
                .unwrap()
                .unwrap();
            // The id minisign printed for this key, in the comment above.
            assert_eq!(key.key_id(), "E7620F1842B4E81F");
        }
        assert!(pinned_key(&dir.path().join("absent.pub"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_key_files_refuse_instead_of_turning_the_check_off() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(key_error(d, "", 0o644).contains("empty"));
        assert!(key_error(d, "untrusted comment: x\n", 0o644).contains("no key"));
        assert!(key_error(d, "not base64!\n", 0o644).contains("not base64"));
        assert!(key_error(d, "AAAA\n", 0o644).contains("3 bytes"));
        assert!(key_error(d, &format!("{KEY}\n{KEY}\n"), 0o644).contains("more than one key"));
        // 42 bytes, but not an ed25519 ("Ed") key.
        let other = base64::engine::general_purpose::STANDARD.encode([b'X'; 42]);
        assert!(key_error(d, &other, 0o644).contains("not a minisign ed25519 public key"));
        assert!(key_error(d, KEY, 0o664).contains("writable by group or others"));
        assert!(key_error(d, KEY, 0o646).contains("writable by group or others"));

        let dangling = d.join("dangling.pub");
        std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
        assert!(matches!(
            pinned_key(&dangling),
            Err(ReleaseError::PublicKeyInvalid { .. })
        ));
        let directory = d.join("dir.pub");
        std::fs::create_dir(&directory).unwrap();
        assert!(matches!(
            pinned_key(&directory),
            Err(ReleaseError::PublicKeyInvalid { .. })
        ));
    }

    #[test]
    fn a_prehashed_signature_verifies_over_the_streamed_bytes_only() {
        for chunks in [1, 2, 4] {
            match check(b"test", chunks, PREHASHED).unwrap() {
                SignatureCheck::Verified {
                    key_id,
                    trusted_comment,
                    ..
                } => {
                    assert_eq!(key_id, "E7620F1842B4E81F");
                    assert_eq!(
                        trusted_comment,
                        "timestamp:1633700835\tfile:test\tprehashed"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        for changed in [&b"Test"[..], b"test\n", b"tes", b""] {
            let err = check(changed, 1, PREHASHED).unwrap_err().to_string();
            assert!(err.contains("changed after it was signed"), "{err}");
        }
        // The trusted comment is signed too.
        let edited = PREHASHED.replace("file:test", "file:other");
        let err = check(b"test", 1, &edited).unwrap_err().to_string();
        assert!(err.contains("changed after it was signed"), "{err}");
    }

    #[test]
    fn bad_signature_files_are_refused_with_the_reason() {
        let err = |text: &str| match check(b"test", 1, text) {
            Err(e @ ReleaseError::SignatureInvalid { .. }) => e.to_string(),
            other => panic!("{text:?}: {other:?}"),
        };
        assert!(err(LEGACY).contains("legacy"));
        assert!(err("").contains("0 lines"));
        assert!(err(&PREHASHED.replace("untrusted comment:", "comment:")).contains("first line"));
        assert!(
            err(&PREHASHED.replace("\ntrusted comment: ", "\ncomment: ")).contains("third line")
        );
        assert!(err(&format!("{PREHASHED}extra\n")).contains("5 lines"));
        let lines: Vec<&str> = PREHASHED.lines().collect();
        let short = format!("{}\nAAAA\n{}\n{}\n", lines[0], lines[2], lines[3]);
        assert!(err(&short).contains("3 bytes"));
        let garbled = format!("{}\n!!\n{}\n{}\n", lines[0], lines[2], lines[3]);
        assert!(err(&garbled).contains("not base64"));
        // Another key's signature (its key id bytes changed) is named as such.
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(lines[1])
            .unwrap();
        bytes[2] ^= 1;
        let foreign = format!(
            "{}\n{}\n{}\n{}\n",
            lines[0],
            base64::engine::general_purpose::STANDARD.encode(&bytes),
            lines[2],
            lines[3]
        );
        let e = err(&foreign);
        assert!(
            e.contains("signed with key E7620F1842B4E81E, but this host pins key E7620F1842B4E81F"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let key = pinned_key(&write_key(dir.path(), KEY, 0o644))
            .unwrap()
            .unwrap();
        assert!(matches!(
            read_signature(
                Path::new("a.tar.gz"),
                &dir.path().join("a.tar.gz.minisig"),
                &key
            ),
            Err(ReleaseError::SignatureMissing { .. })
        ));
    }
}
