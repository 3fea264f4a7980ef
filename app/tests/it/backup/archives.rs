//! Damaged, changed and oversized archives are refused before anything is restored.

use super::*;

/// Rewrites an archive, passing each entry through `change` (name, bytes) → bytes.
pub(super) fn rewrite_archive(from: &Path, to: &Path, change: impl Fn(&str, Vec<u8>) -> Vec<u8>) {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(from).unwrap(),
    ));
    let mut out = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(to).unwrap(),
        flate2::Compression::fast(),
    ));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        let bytes = change(&name, bytes);
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        out.append_data(&mut header, &name, bytes.as_slice())
            .unwrap();
    }
    out.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub(super) async fn damaged_archives_are_refused_before_anything_is_restored(db: Db) {
    let (source, _source_dir) = open(&db).await;
    populate(source.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let info = backups(&source, dir.path())
        .await
        .create(Trigger::Cli)
        .await
        .unwrap();
    let original = dir.path().join(&info.name);
    let (target, _target_dir) = open(&db).await;
    let scratch = tempfile::tempdir().unwrap();
    let backups_of_target = backups(&target, scratch.path()).await;
    let data_file = match target.backend() {
        store::Backend::Sqlite => "data/ddms.sqlite",
        store::Backend::Postgres => "data/readings.copy",
    };

    // 1. A changed data file no longer matches its checksum.
    let flipped = scratch.path().join("flipped.tar.gz");
    rewrite_archive(&original, &flipped, |name, mut bytes| {
        if name == data_file {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
        }
        bytes
    });
    // 2. A data file whose checksum was "fixed" in the manifest, minus a row: the count says so.
    let manifest_of = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap();
    let truncated = scratch.path().join("truncated.tar.gz");
    if target.backend() == store::Backend::Postgres {
        let cut = std::cell::RefCell::new(None::<Vec<u8>>);
        rewrite_archive(&original, &truncated, |name, bytes| {
            if name == data_file {
                let text = String::from_utf8(bytes).unwrap();
                let shorter: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
                *cut.borrow_mut() = Some(shorter.clone().into_bytes());
                shorter.into_bytes()
            } else {
                bytes
            }
        });
        let shorter = cut.into_inner().unwrap();
        let refixed = scratch.path().join("refixed.tar.gz");
        rewrite_archive(&truncated, &refixed, |name, bytes| {
            if name == "manifest.json" {
                let mut manifest = manifest_of(&bytes);
                for file in manifest["files"].as_array_mut().unwrap() {
                    if file["path"] == "readings.copy" {
                        file["sha256"] = json!(sha256_hex(&shorter));
                        file["bytes"] = json!(shorter.len());
                    }
                }
                serde_json::to_vec(&manifest).unwrap()
            } else {
                bytes
            }
        });
        std::fs::rename(&refixed, &truncated).unwrap();
    } else {
        // SQLite: a manifest that claims one row more than the file holds.
        rewrite_archive(&original, &truncated, |name, bytes| {
            if name == "manifest.json" {
                let mut manifest = manifest_of(&bytes);
                for table in manifest["snapshot"]["tables"].as_array_mut().unwrap() {
                    if table["name"] == "readings" {
                        table["rows"] = json!(table["rows"].as_u64().unwrap() + 1);
                    }
                }
                serde_json::to_vec(&manifest).unwrap()
            } else {
                bytes
            }
        });
    }
    // 3. An entry that would escape the unpacking directory.
    let escaping = scratch.path().join("escaping.tar.gz");
    rewrite_archive(&original, &escaping, |_, bytes| bytes);
    {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&escaping)
            .unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut header = tar::Header::new_gnu();
        // Written raw: the tar crate itself refuses to build such a path.
        let name = b"data/../../x";
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_size(2);
        header.set_mode(0o600);
        header.set_cksum();
        builder.append(&header, &b"{}"[..]).unwrap();
        out.write_all(&builder.into_inner().unwrap().finish().unwrap())
            .unwrap();
    }
    // 4. Not an archive at all.
    let garbage = scratch.path().join("garbage.tar.gz");
    std::fs::write(&garbage, b"this is not a backup").unwrap();

    for (archive, says) in [
        (&flipped, "does not match its checksum"),
        (&truncated, "rows; the manifest says"),
        (&escaping, "unexpected entry"),
        (&garbage, "is damaged"),
    ] {
        let path = archive.display().to_string();
        let err = backups_of_target.verify(&path).await.unwrap_err();
        assert!(matches!(err, BackupError::Damaged { .. }), "{path}: {err}");
        assert!(err.to_string().contains(says), "{path}: {err}");
        let err = backups_of_target.restore(&path, false).await.unwrap_err();
        assert!(matches!(err, BackupError::Damaged { .. }), "{path}: {err}");
        assert_eq!(
            row_count(target.as_ref()).await,
            0,
            "{path}: nothing restored"
        );
    }
    // The untouched archive still restores.
    backups_of_target
        .restore(&original.display().to_string(), false)
        .await
        .unwrap();
    assert_eq!(row_count(target.as_ref()).await, 3);
}

/// A gzip'd tar of `entries` (name, declared size, contents; contents may be shorter than
/// the size only when nothing reads that far).
pub(super) fn build_archive(to: &Path, entries: Vec<(&str, u64, Box<dyn Read>)>) {
    let mut out = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(to).unwrap(),
        flate2::Compression::fast(),
    ));
    for (name, size, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o600);
        header.set_cksum();
        out.append_data(&mut header, name, data).unwrap();
    }
    out.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// Restore and verify unpack no more than the manifest declares, and no more than the caps
/// allow (`docs/limits.md`): a small archive that would inflate to much more is refused at
/// the entry's header, before its bytes are written.
#[tokio::test]
async fn decompression_bombs_are_refused_before_anything_large_is_unpacked() {
    let (source, _source_dir) = open(&Db::Sqlite).await;
    populate(source.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let made = backups(&source, dir.path()).await;
    let info = made.create(Trigger::Cli).await.unwrap();
    let original = dir.path().join(&info.name);
    let mut manifest = Vec::new();
    let mut data = Vec::new();
    {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&original).unwrap(),
        ));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let into = if name == "manifest.json" {
                &mut manifest
            } else {
                &mut data
            };
            entry.read_to_end(into).unwrap();
        }
    }
    let declared = |bytes: u64| {
        let mut m: Value = serde_json::from_slice(&manifest).unwrap();
        m["files"][0]["bytes"] = json!(bytes);
        serde_json::to_vec(&m).unwrap()
    };
    let manifest_entry = |bytes: Vec<u8>| {
        let len = bytes.len() as u64;
        (
            "manifest.json",
            len,
            Box::new(std::io::Cursor::new(bytes)) as Box<dyn Read>,
        )
    };
    let zeros = |n: u64| Box::new(std::io::repeat(0).take(n)) as Box<dyn Read>;
    let big: u64 = 64 << 20;
    let work = tempfile::tempdir().unwrap();

    // 1. The manifest's size for the data file, but an entry of 64 MiB of zeros (64 KiB packed).
    let inflating = work.path().join("inflating.tar.gz");
    build_archive(
        &inflating,
        vec![
            manifest_entry(manifest.clone()),
            ("data/ddms.sqlite", big, zeros(big)),
        ],
    );
    // 2. A manifest that declares a petabyte (the entry itself need not be there).
    let petabyte = work.path().join("petabyte.tar.gz");
    build_archive(
        &petabyte,
        vec![
            manifest_entry(declared(1 << 50)),
            (
                "data/ddms.sqlite",
                data.len() as u64,
                Box::new(std::io::Cursor::new(data.clone())),
            ),
        ],
    );
    // 3. A data entry the manifest does not list.
    let unlisted = work.path().join("unlisted.tar.gz");
    build_archive(
        &unlisted,
        vec![
            manifest_entry(manifest.clone()),
            ("data/extra", big, zeros(big)),
        ],
    );
    // 4. Data before the manifest, which could not have been bounded yet.
    let data_first = work.path().join("data-first.tar.gz");
    build_archive(
        &data_first,
        vec![
            ("data/ddms.sqlite", big, zeros(big)),
            manifest_entry(manifest.clone()),
        ],
    );
    let packed = std::fs::metadata(&inflating).unwrap().len();
    assert!(packed < big / 100, "the bomb is small packed: {packed}");

    let (target, _target_dir) = open(&Db::Sqlite).await;
    let restoring = backups(&target, work.path()).await;
    for (archive, says) in [
        (
            &inflating,
            format!(
                "data/ddms.sqlite is {big} bytes in the archive; the manifest says {} bytes",
                data.len()
            ),
        ),
        (
            &petabyte,
            format!(
                "declares {} bytes of data, more than the 274877906944",
                1u64 << 50
            ),
        ),
        (&unlisted, "data/extra is not in the manifest".to_string()),
        (
            &data_first,
            "`data/ddms.sqlite` comes before manifest.json".to_string(),
        ),
    ] {
        let path = archive.display().to_string();
        let err = restoring.verify(&path).await.unwrap_err();
        assert!(matches!(err, BackupError::Damaged { .. }), "{path}: {err}");
        assert!(err.to_string().contains(&says), "{path}: {err}");
        let err = restoring.restore(&path, false).await.unwrap_err();
        assert!(err.to_string().contains(&says), "{path}: {err}");
        assert_eq!(
            row_count(target.as_ref()).await,
            0,
            "{path}: nothing restored"
        );
    }
    // The genuine archive still restores.
    restoring
        .restore(&original.display().to_string(), false)
        .await
        .unwrap();
}

#[tokio::test]
async fn sqlite_damaged_archives_are_refused_before_anything_is_restored() {
    damaged_archives_are_refused_before_anything_is_restored(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_damaged_archives_are_refused_before_anything_is_restored() {
    damaged_archives_are_refused_before_anything_is_restored(Db::Postgres(
        Provider::from_env().await,
    ))
    .await;
}
