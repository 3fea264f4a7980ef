//! Release signing: `cargo xtask keygen` makes a minisign (ed25519) key pair, `cargo xtask
//! sign` and `cargo xtask build --signing-key` write `<artifact>.minisig` next to the artifact
//! and its `.sha256`. Hosts that pin the public key (`/etc/ddms/release.pub`) install only
//! artifacts it signed (`ddms release install`, docs/deploying.md).
//!
//! The secret key is only ever read from a file named by `--signing-key` or `DDMS_SIGNING_KEY`,
//! and its password from `DDMS_SIGNING_KEY_PASSWORD` or the terminal. Neither is a
//! `DDMS_RELEASE_*` variable on purpose: those are forwarded to the hosts by `cargo xtask
//! deploy`. The signature format is minisign's own, so `minisign -V` checks what this writes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use minisign::{KeyPair, PublicKey, SecretKey, SecretKeyBox};

/// The variable naming the secret key file when `--signing-key` is not given.
pub const KEY_ENV: &str = "DDMS_SIGNING_KEY";
/// The variable holding the secret key's password (else it is asked for on the terminal).
pub const PASSWORD_ENV: &str = "DDMS_SIGNING_KEY_PASSWORD";

pub struct KeygenOptions {
    pub secret_key: PathBuf,
    pub public_key: PathBuf,
    /// No password on the secret key (for a CI secret store that protects it instead).
    pub unencrypted: bool,
    pub force: bool,
}

/// Makes a key pair: the secret key (mode 0600, never inside the repository) and the public key
/// (`minisign -G`'s `.pub` format, what hosts pin). Returns the key id.
pub fn keygen(options: &KeygenOptions, repository: &Path) -> Result<String> {
    refuse_inside(&options.secret_key, repository)?;
    for path in [&options.secret_key, &options.public_key] {
        ensure!(
            options.force || !path.exists(),
            "{} exists; pass --force to replace it (a new key pair needs a new pin on every host)",
            path.display()
        );
    }
    let KeyPair { pk, sk } = if options.unencrypted {
        KeyPair::generate_unencrypted_keypair()
    } else {
        // None: minisign asks on the terminal, twice.
        KeyPair::generate_encrypted_keypair(password_from_env())
    }
    .map_err(|e| anyhow::anyhow!("cannot make a key pair: {e}"))?;
    let id = key_id(&pk);
    let secret = sk
        .to_box(Some(&format!("ddms release secret key {id}")))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let public = pk.to_box().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_file(&options.secret_key, secret.to_string().as_bytes(), 0o600)?;
    write_file(&options.public_key, public.to_string().as_bytes(), 0o644)?;
    Ok(id)
}

/// A secret key inside the work tree is one `git add -A` away from being published.
fn refuse_inside(path: &Path, repository: &Path) -> Result<()> {
    let absolute = std::path::absolute(path).with_context(|| path.display().to_string())?;
    let parent = absolute.parent().unwrap_or(Path::new("/"));
    let parent = parent
        .canonicalize()
        .unwrap_or_else(|_| parent.to_path_buf());
    let repository = repository
        .canonicalize()
        .unwrap_or_else(|_| repository.to_path_buf());
    ensure!(
        !parent.starts_with(&repository),
        "{} is inside the repository ({}): keep the secret key outside it (docs/deploying.md)",
        path.display(),
        repository.display()
    );
    Ok(())
}

/// Writes a new file with `mode`, replacing an existing one only through a rename, so a
/// secret key is never readable by others even for a moment.
fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_context(|| format!("write {}", path.display()));
    }
    Ok(())
}

fn password_from_env() -> Option<String> {
    std::env::var(PASSWORD_ENV).ok()
}

/// The secret key file: `--signing-key`, else `DDMS_SIGNING_KEY` (an empty value is unset).
pub fn key_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| {
        std::env::var_os(KEY_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// Reads a secret key file, decrypting it with `DDMS_SIGNING_KEY_PASSWORD` or a password
/// asked for on the terminal when it is encrypted.
pub fn load_secret_key(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the signing key {}", path.display()))?;
    let invalid = |reason: String| {
        anyhow::anyhow!("{} is not a minisign secret key: {reason}", path.display())
    };
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .nth(1)
        .ok_or_else(|| invalid("expected a comment line and a key line".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|e| invalid(format!("not base64: {e}")))?;
    // Algorithm (2 bytes), then the password derivation's: "\0\0" for none, "Sc" for scrypt.
    let encrypted = match bytes.get(2..4) {
        Some([0, 0]) => false,
        Some(b"Sc") => true,
        _ => return Err(invalid("unknown key derivation".into())),
    };
    let sk_box = SecretKeyBox::from_string(&text).map_err(|e| invalid(e.to_string()))?;
    let sk = if encrypted {
        sk_box.into_secret_key(password_from_env())
    } else {
        sk_box.into_unencrypted_secret_key()
    };
    sk.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `<artifact>.minisig`.
pub fn signature_path(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

/// Signs `artifact` with the secret key at `key`, writing `<artifact>.minisig`. The signature
/// is checked against the key's public half before it is written.
pub fn sign(artifact: &Path, key: &Path) -> Result<PathBuf> {
    let sk = load_secret_key(key)?;
    let pk = PublicKey::from_secret_key(&sk).map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = artifact
        .file_name()
        .with_context(|| format!("{} names no file", artifact.display()))?
        .to_string_lossy()
        .into_owned();
    ensure!(
        !name.contains(['\t', '\n', '\r']),
        "{name:?}: a file name for a signed comment cannot hold tabs or line breaks"
    );
    let file =
        std::fs::File::open(artifact).with_context(|| format!("open {}", artifact.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // What `minisign -S` writes, so either tool's signatures read the same.
    let trusted = format!("timestamp:{now}\tfile:{name}\thashed");
    let untrusted = format!("signature from ddms release key {}", key_id(&pk));
    let signature = minisign::sign(
        Some(&pk),
        &sk,
        std::io::BufReader::new(file),
        Some(&trusted),
        Some(&untrusted),
    )
    .map_err(|e| anyhow::anyhow!("cannot sign {}: {e}", artifact.display()))?;
    if !signature.is_prehashed() {
        bail!("minisign made a legacy signature; hosts accept only prehashed ones");
    }
    let path = signature_path(artifact);
    write_file(&path, signature.to_string().as_bytes(), 0o644)?;
    Ok(path)
}

/// minisign's key id: the key number as a little-endian 64-bit number in upper-case hex.
pub fn key_id(pk: &PublicKey) -> String {
    pk.keynum()
        .iter()
        .rev()
        .map(|b| format!("{b:02X}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn keys(dir: &Path) -> (PathBuf, PathBuf, String) {
        let (secret, public) = (dir.join("keys/release.key"), dir.join("release.pub"));
        let id = keygen(
            &KeygenOptions {
                secret_key: secret.clone(),
                public_key: public.clone(),
                unencrypted: true,
                force: false,
            },
            Path::new(env!("CARGO_MANIFEST_DIR")),
        )
        .unwrap();
        (secret, public, id)
    }

    fn minisign_verifies(artifact: &Path, public: &Path) -> (bool, String) {
        let out = Command::new("minisign")
            .args(["-V", "-H", "-p"])
            .arg(public)
            .arg("-m")
            .arg(artifact)
            .output()
            .expect("the `minisign` command (Debian: apt-get install minisign)");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// The reference implementation, independent of this crate's, accepts what xtask signs
    /// (prehashed: `-H` refuses legacy signatures, as `ddms release install` does) and refuses
    /// it once the artifact changes.
    #[test]
    fn minisign_itself_verifies_what_xtask_signs() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public, id) = keys(dir.path());
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
                & 0o777
        };
        assert_eq!(mode(&secret), 0o600);
        assert_eq!(mode(&public), 0o644);
        let pub_text = std::fs::read_to_string(&public).unwrap();
        assert!(
            pub_text.starts_with(&format!("untrusted comment: minisign public key: {id}\n")),
            "{pub_text}"
        );

        let artifact = dir.path().join("ddms-1.2.3-x86_64-linux.tar.gz");
        std::fs::write(&artifact, vec![7u8; 300_000]).unwrap();
        let sig = sign(&artifact, &secret).unwrap();
        assert_eq!(
            sig,
            dir.path().join("ddms-1.2.3-x86_64-linux.tar.gz.minisig")
        );
        let text = std::fs::read_to_string(&sig).unwrap();
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .starts_with("trusted comment: timestamp:"),
            "{text}"
        );
        assert!(
            text.contains("\tfile:ddms-1.2.3-x86_64-linux.tar.gz\thashed\n"),
            "{text}"
        );

        let (ok, output) = minisign_verifies(&artifact, &public);
        assert!(ok, "{output}");
        assert!(
            output.contains("file:ddms-1.2.3-x86_64-linux.tar.gz"),
            "{output}"
        );

        let mut bytes = std::fs::read(&artifact).unwrap();
        bytes[150_000] ^= 1;
        std::fs::write(&artifact, &bytes).unwrap();
        let (ok, output) = minisign_verifies(&artifact, &public);
        assert!(!ok, "a changed artifact verified: {output}");

        // Another key pair's public key does not accept it either.
        bytes[150_000] ^= 1;
        std::fs::write(&artifact, &bytes).unwrap();
        let other = tempfile::tempdir().unwrap();
        let (_, other_public, other_id) = keys(other.path());
        assert_ne!(id, other_id);
        let (ok, output) = minisign_verifies(&artifact, &other_public);
        assert!(!ok, "another key verified it: {output}");
    }

    /// And the other way round: a password-protected key minisign made signs here, so
    /// operators may make keys with either tool. (`minisign -G -W`'s unprotected keys are not
    /// read by the `minisign` crate: it finds their checksum wrong.)
    #[test]
    fn a_key_pair_minisign_made_signs_here() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = (dir.path().join("m.key"), dir.path().join("m.pub"));
        let mut child = Command::new("minisign")
            .args(["-G", "-p"])
            .arg(&public)
            .arg("-s")
            .arg(&secret)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the `minisign` command (Debian: apt-get install minisign)");
        // Not a terminal: minisign reads the password (and its repetition) from standard input.
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"correct horse\ncorrect horse\n")
            .unwrap();
        assert!(child.wait().unwrap().success());
        let artifact = dir.path().join("a.tar.gz");
        std::fs::write(&artifact, b"release bytes").unwrap();

        // nextest runs each test in a process of its own; no other test here reads it anyway.
        std::env::set_var(PASSWORD_ENV, "wrong");
        let err = sign(&artifact, &secret).unwrap_err().to_string();
        assert!(err.contains("Wrong password"), "{err}");
        std::env::set_var(PASSWORD_ENV, "correct horse");
        sign(&artifact, &secret).unwrap();
        std::env::remove_var(PASSWORD_ENV);
        let (ok, output) = minisign_verifies(&artifact, &public);
        assert!(ok, "{output}");
    }

    #[test]
    fn keys_stay_out_of_the_repository_and_are_not_overwritten() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let err = keygen(
            &KeygenOptions {
                secret_key: repo.join("release.key"),
                public_key: repo.join("release.pub"),
                unencrypted: true,
                force: false,
            },
            repo,
        )
        .unwrap_err();
        assert!(err.to_string().contains("inside the repository"), "{err}");
        assert!(!repo.join("release.key").exists());

        let dir = tempfile::tempdir().unwrap();
        let (secret, public, _) = keys(dir.path());
        let before = std::fs::read(&secret).unwrap();
        let again = KeygenOptions {
            secret_key: secret.clone(),
            public_key: public,
            unencrypted: true,
            force: false,
        };
        let err = keygen(&again, repo).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(&secret).unwrap(), before);
    }

    #[test]
    fn what_is_not_a_secret_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        for (text, want) in [
            ("", "comment line and a key line"),
            ("untrusted comment: x\n!!!\n", "not base64"),
            (
                "untrusted comment: x\nRWRYWFhYWFg=\n",
                "unknown key derivation",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = load_secret_key(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // A public key is not a secret key.
        let (_, public, _) = keys(dir.path());
        assert!(load_secret_key(&public).is_err());
    }
}
