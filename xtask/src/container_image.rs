//! `cargo xtask image`: the container image of `ops/container/` — a statically linked `ddms`
//! on `scratch`, built locally with no registry.
//!
//! The binary is built for the build machine's own architecture, as the explicit target
//! `x86_64-unknown-linux-gnu` or `aarch64-unknown-linux-gnu`, with
//! `-C target-feature=+crt-static` (static glibc; this toolchain has no musl target). The
//! release workflow builds the arm64 image this way on an arm64 runner. With an
//! explicit `--target`, the flag reaches only the target's crates, not build scripts or proc
//! macros, and the output lands in `target/<triple>/release/`, apart from the ordinary release
//! build. The image's whole file system is one tar with exact owners and modes
//! (`rootfs.tar`), which the Dockerfile `ADD`s; the classic builder's `COPY` keeps neither.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

/// The target the static binary is built for: the build machine's architecture, so that no
/// cross linker or C library is needed (the image's platform is the machine's too).
pub const TARGET: &str = if cfg!(target_arch = "aarch64") {
    "aarch64-unknown-linux-gnu"
} else {
    "x86_64-unknown-linux-gnu"
};
const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";
/// Default repository of the image; tagged `:<version>` and `:latest`.
pub const DEFAULT_REPOSITORY: &str = "ddms";
/// The service user of the image (numeric: no lookup needed to tell it is not root).
const UID: u64 = 65532;
/// Where Debian's `ca-certificates` keeps the bundle the image ships.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub struct Options {
    pub repository: String,
    pub locked: bool,
}

/// Builds the static binary and the image; the image's `<repository>:<version>`.
pub fn run(sh: &Shell, options: &Options) -> Result<String> {
    let binary = build_static_binary(sh, options.locked)?;
    let bytes = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    check_static(&bytes)
        .map_err(|why| anyhow::anyhow!("{} is not a static executable: {why}", binary.display()))?;
    // Also proves the static binary starts at all.
    let version_line = cmd!(sh, "{binary} --version").read()?;
    // "ddms 0.1.0 (git abc1234)"
    let version = version_line
        .split_whitespace()
        .nth(1)
        .context("unexpected `ddms --version` output")?;
    let revision = version_line
        .split_once("(git ")
        .and_then(|(_, rest)| rest.split(')').next())
        .unwrap_or_default();

    let context = crate::build::target_dir(sh)?.join("image-context");
    sh.remove_path(&context)?;
    sh.create_dir(&context)?;
    sh.copy_file("ops/container/Dockerfile", &context)?;
    let ca_bundle = fs::read(CA_BUNDLE).with_context(|| {
        format!("reading {CA_BUNDLE} (Debian/Ubuntu: `apt-get install ca-certificates`)")
    })?;
    let rootfs = rootfs_tar(&bytes, &ca_bundle, Path::new("ops/container/rootfs"))?;
    fs::write(context.join("rootfs.tar"), rootfs).context("writing rootfs.tar")?;

    let reference = format!("{}:{version}", options.repository);
    let latest = format!("{}:latest", options.repository);
    let labels = [
        "org.opencontainers.image.title=ddms".to_owned(),
        format!("org.opencontainers.image.version={version}"),
        format!("org.opencontainers.image.revision={revision}"),
        "org.opencontainers.image.licenses=Apache-2.0".to_owned(),
        "org.opencontainers.image.source=https://github.com/ddms-project/ddms".to_owned(),
    ];
    let label_args: Vec<String> = labels
        .iter()
        .flat_map(|l| ["--label".to_owned(), l.clone()])
        .collect();
    cmd!(
        sh,
        "docker build --quiet {label_args...} --tag {reference} --tag {latest} {context}"
    )
    .run()
    .context("docker build of ops/container/Dockerfile")?;
    sh.remove_path(&context)?;
    println!(
        "image: {reference} (also {latest}), binary {}",
        binary.display()
    );
    Ok(reference)
}

/// `cargo build --release --target <TARGET>` with `+crt-static`; the path of the binary.
pub fn build_static_binary(sh: &Shell, locked: bool) -> Result<PathBuf> {
    let locked = locked.then_some("--locked");
    let _flags = sh.push_env("RUSTFLAGS", STATIC_RUSTFLAGS);
    cmd!(
        sh,
        "cargo build {locked...} --release -p ddms --bin ddms --target {TARGET}"
    )
    .run()?;
    Ok(crate::build::target_dir(sh)?.join(format!("{TARGET}/release/ddms")))
}

/// One file or directory of the image, owned by `uid:uid`.
struct Entry {
    path: String,
    uid: u64,
    mode: u32,
    /// `None` for a directory.
    data: Option<Vec<u8>>,
}

/// The image's file system, parents before children.
fn rootfs_entries(binary: &[u8], ca_bundle: &[u8], rootfs_dir: &Path) -> Result<Vec<Entry>> {
    let dir = |path: &str, uid, mode| Entry {
        path: path.to_owned(),
        uid,
        mode,
        data: None,
    };
    let file = |path: &str, mode, data: Vec<u8>| Entry {
        path: path.to_owned(),
        uid: 0,
        mode,
        data: Some(data),
    };
    let etc = |name: &str| -> Result<Vec<u8>> {
        let path = rootfs_dir.join("etc").join(name);
        fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(vec![
        dir("etc", 0, 0o755),
        file("etc/passwd", 0o644, etc("passwd")?),
        file("etc/group", 0o644, etc("group")?),
        file("etc/nsswitch.conf", 0o644, etc("nsswitch.conf")?),
        dir("etc/ssl", 0, 0o755),
        dir("etc/ssl/certs", 0, 0o755),
        file(
            "etc/ssl/certs/ca-certificates.crt",
            0o644,
            ca_bundle.to_vec(),
        ),
        dir("usr", 0, 0o755),
        dir("usr/local", 0, 0o755),
        dir("usr/local/bin", 0, 0o755),
        file("usr/local/bin/ddms", 0o755, binary.to_vec()),
        dir("data", UID, 0o700),
        dir("tmp", 0, 0o1777),
    ])
}

/// The tar the Dockerfile `ADD`s: fixed owners, modes and timestamps.
fn rootfs_tar(binary: &[u8], ca_bundle: &[u8], rootfs_dir: &Path) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for Entry {
        path,
        uid,
        mode,
        data,
    } in rootfs_entries(binary, ca_bundle, rootfs_dir)?
    {
        let mut header = tar::Header::new_gnu();
        header.set_uid(uid);
        header.set_gid(uid);
        header.set_mode(mode);
        header.set_mtime(0);
        match data {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_cksum();
                tar.append_data(&mut header, &path, data.as_slice())?;
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_cksum();
                tar.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
        }
    }
    Ok(tar.into_inner()?)
}

/// Ok when `elf` is a 64-bit little-endian executable (x86-64 or arm64) that needs no dynamic
/// loader and no shared library:
/// no `PT_INTERP` program header and no `DT_NEEDED` entry (a static-pie keeps a `PT_DYNAMIC`
/// for its own relocations, so that alone says nothing).
pub fn check_static(elf: &[u8]) -> Result<(), String> {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NULL: u64 = 0;
    const DT_NEEDED: u64 = 1;
    let u16_at = |at: usize| -> Result<u16, String> {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    let u32_at = |at: usize| -> Result<u32, String> {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    let u64_at = |at: usize| -> Result<u64, String> {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    let offset = |value: u64| usize::try_from(value).map_err(|_| "offset out of range".to_owned());
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    if elf.get(4..6) != Some([2u8, 1].as_slice()) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let phoff = offset(u64_at(0x20)?)?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(ph)? {
            PT_INTERP => {
                let start = offset(u64_at(ph + 8)?)?;
                let len = offset(u64_at(ph + 0x20)?)?;
                let interp = elf
                    .get(start..start + len)
                    .map(|b| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned())
                    .unwrap_or_default();
                return Err(format!("it asks for the dynamic loader {interp}"));
            }
            PT_DYNAMIC => {
                let start = offset(u64_at(ph + 8)?)?;
                let len = offset(u64_at(ph + 0x20)?)?;
                for entry in (start..start + len).step_by(16) {
                    match u64_at(entry)? {
                        DT_NULL => break,
                        DT_NEEDED => return Err("it needs shared libraries (DT_NEEDED)".into()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamically_linked_executable_is_not_static() {
        // This test binary is an ordinary (dynamic) build.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let why = check_static(&me).unwrap_err();
        // /lib64/ld-linux-x86-64.so.2 or /lib/ld-linux-aarch64.so.1
        assert!(why.contains("dynamic loader /lib"), "{why}");
    }

    #[test]
    fn what_is_not_an_elf_executable_is_refused() {
        assert_eq!(check_static(b"#!/bin/sh\n").unwrap_err(), "not an ELF file");
        assert!(check_static(b"\x7fELF\x02\x01")
            .unwrap_err()
            .contains("truncated"));
    }

    #[test]
    fn the_rootfs_tar_has_a_non_root_data_dir_and_root_owned_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/container/rootfs");
        let tar = rootfs_tar(b"binary", b"bundle", &dir).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u64, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect();
        assert!(
            entries.contains(&("data/".into(), UID, 0o700)),
            "{entries:?}"
        );
        assert!(entries.contains(&("tmp/".into(), 0, 0o1777)), "{entries:?}");
        assert!(
            entries.contains(&("usr/local/bin/ddms".into(), 0, 0o755)),
            "{entries:?}"
        );
        let passwd = fs::read_to_string(dir.join("etc/passwd")).unwrap();
        assert!(passwd.contains(&format!("ddms:x:{UID}:{UID}:")), "{passwd}");
    }
}
