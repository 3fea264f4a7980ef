//! `ddms release install`: a tampered or truncated artifact is refused and leaves nothing
//! behind; only the bytes it checked are ever run or installed.

use super::*;

#[tokio::test]
async fn install_refuses_a_tampered_or_truncated_artifact_and_leaves_nothing_behind() {
    let artifacts = artifacts();
    let host = ReleaseHost::start().await.unwrap();
    let good = &artifacts.good[0];
    let work = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&good.tarball).unwrap();
    let checksum = std::fs::read_to_string(&good.checksum).unwrap();
    let releases = host.root.join("opt/ddms/releases");

    // One flipped byte in the middle of the binary.
    let tampered = work.path().join("ddms-v1.tar.gz");
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    std::fs::write(&tampered, &flipped).unwrap();
    std::fs::write(work.path().join("ddms-v1.tar.gz.sha256"), &checksum).unwrap();
    let run = host.install_path(&tampered, None).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("does not match its published checksum")
            && run.stderr.contains("nothing was installed"),
        "{}",
        run.stderr
    );
    assert_nothing_installed(&releases);

    // A download cut short, checked against a checksum file given explicitly.
    let truncated = work.path().join("partial.tar.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let run = host.install_path(&truncated, Some(&good.checksum)).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("published checksum"), "{}", run.stderr);
    assert_nothing_installed(&releases);

    // A truncated archive whose checksum matches (published wrongly) fails while unpacking,
    // and still leaves nothing.
    let sum = format!(
        "{}  partial.tar.gz
",
        hex_sha256(&bytes[..bytes.len() / 3])
    );
    std::fs::write(work.path().join("partial.tar.gz.sha256"), sum).unwrap();
    let run = host.install_path(&truncated, None).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("not a ddms release artifact"),
        "{}",
        run.stderr
    );
    assert_nothing_installed(&releases);

    // No checksum at all.
    let lonely = work.path().join("lonely.tar.gz");
    std::fs::write(&lonely, &bytes).unwrap();
    let run = host.install_path(&lonely, None).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("no published checksum"),
        "{}",
        run.stderr
    );

    // The intact artifact installs, with its metadata; again is a no-op.
    let run = host.install(good).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let installed = run.json();
    assert_eq!(installed["release"], "v1");
    assert_eq!(installed["installed"], true);
    assert!(installed["digest"]
        .as_str()
        .unwrap()
        .ends_with(checksum.split_whitespace().next().unwrap()));
    assert!(installed["version_output"]
        .as_str()
        .unwrap()
        .starts_with(&format!("ddms {} (git ", env!("CARGO_PKG_VERSION"))));
    assert!(installed["installed_at"].is_string());
    assert_eq!(files_under(&releases), ["v1"]);
    assert!(releases.join("v1/ddms").is_file());
    assert!(releases.join("v1/ops/nginx/ddms.conf").is_file());
    let again = host.install(good).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.json()["installed"], false);

    // A different artifact under an installed name is refused.
    let impostor_dir = work.path().join("impostor");
    std::fs::create_dir_all(&impostor_dir).unwrap();
    let impostor = crate::support::release::pack_release(
        &impostor_dir,
        "v1",
        &artifacts.dir.join("scripts/never-ready"),
    )
    .unwrap();
    let run = host.install(&impostor).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("refusing to overwrite"),
        "{}",
        run.stderr
    );
    assert_eq!(files_under(&releases), ["v1"]);
}

pub(super) fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The artifact is read once, into a private copy that is checked and then unpacked: a path
/// whose contents change between the check and the unpacking — here a FIFO that gives the
/// genuine bytes to its first reader and a tampered archive to the next, as a local user
/// swapping the file would — never gets a binary run or installed.
#[tokio::test]
pub(super) async fn install_never_runs_or_installs_anything_but_the_bytes_it_checked() {
    let artifacts = artifacts();
    let host = ReleaseHost::start().await.unwrap();
    let good = &artifacts.good[0];
    let work = tempfile::tempdir().unwrap();
    let releases = host.root.join("opt/ddms/releases");

    // A release whose binary leaves a marker whenever anything runs it, then acts as ddms.
    let marker = work.path().join("tampered-binary-ran");
    let script = work.path().join("marking-ddms");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            crate::support::app::ddms_bin().display()
        ),
    )
    .unwrap();
    let evil_dir = work.path().join("evil");
    std::fs::create_dir_all(&evil_dir).unwrap();
    let evil = crate::support::release::pack_release(&evil_dir, "v9", &script).unwrap();

    let fifo = work.path().join("ddms-v9.tar.gz");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::copy(&good.checksum, work.path().join("ddms-v9.tar.gz.sha256")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (fifo, stop) = (fifo.clone(), stop.clone());
        let contents = vec![
            std::fs::read(&good.tarball).unwrap(),
            std::fs::read(&evil.tarball).unwrap(),
        ];
        std::thread::spawn(move || serve_to_successive_readers(&fifo, contents, &stop))
    };
    let run = host.install_path(&fifo, None).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    assert!(!marker.exists(), "the tampered binary ran: {run:?}");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("not a regular file") && run.stderr.contains("nothing was installed"),
        "{}",
        run.stderr
    );
    assert_nothing_installed(&releases);
}

/// Writes `contents[i]` to the i-th reader that opens `fifo`, each only after the previous
/// reader closed it; gives up when `stop` is set.
pub(super) fn serve_to_successive_readers(
    fifo: &std::path::Path,
    contents: Vec<Vec<u8>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let stopped = || stop.load(std::sync::atomic::Ordering::SeqCst);
    for bytes in contents {
        // A non-blocking open for writing fails (ENXIO) until a reader has the FIFO open.
        let mut file = loop {
            if stopped() {
                return;
            }
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(fifo)
            {
                Ok(file) => break file,
                // sleep: the fake reader's poll for a writer on the FIFO (its loop ends when stopped)
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        nix::fcntl::fcntl(
            file.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .unwrap();
        if file.write_all(&bytes).is_err() {
            return;
        }
        drop(file);
        // The next bytes are for the next reader: wait until this one has let go.
        while fifo_open_anywhere(fifo) {
            if stopped() {
                return;
            }
            // sleep: the fake reader's poll until the writer lets go (its loop ends when stopped)
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether any process has `path` open.
pub(super) fn fifo_open_anywhere(path: &std::path::Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        std::fs::read_dir(p.path().join("fd"))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == path))
            })
            .unwrap_or(false)
    })
}
