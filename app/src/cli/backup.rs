//! `ddms backup create|list|verify|restore`: the command-line face of [`crate::backup`];
//! creating and restoring are audited with actor `cli`.

use clap::Subcommand;

use super::{audit_cli, open_migrated, print_json};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write a backup archive now: a consistent snapshot of the database, into backup.dir and,
    /// with backup.s3.bucket, to S3. Prints it as JSON.
    Create,
    /// The archives in backup.dir and in S3, newest first, as JSON.
    List,
    /// Check an archive against its manifest: checksums, row counts, SQLite's integrity check.
    Verify {
        /// An archive's name (see `list`) or path.
        backup: String,
    },
    /// Load an archive into the configured database, all or nothing (verified first). The
    /// database must be empty unless --force. Stop the service first.
    Restore {
        /// An archive's name (see `list`) or path.
        backup: String,
        /// Replace what the database holds.
        #[arg(long)]
        force: bool,
    },
}

pub(super) async fn run(config: Config, command: BackupCommand) -> anyhow::Result<()> {
    use crate::backup::{Backups, Trigger};
    let store = open_migrated(&config).await?;
    let backups = std::sync::Arc::new(Backups::new(store.clone(), &config).await);
    match command {
        BackupCommand::Create => {
            let info = backups.create(Trigger::Cli).await?;
            audit_cli(
                store.as_ref(),
                "backup.create",
                format!("backup:{}", info.name),
                serde_json::json!({ "trigger": "cli", "bytes": info.bytes }),
            )
            .await?;
            eprintln!(
                "backup {} written to {} ({} bytes)",
                info.name,
                backups.dir().display(),
                info.bytes
            );
            print_json(&info, false);
        }
        BackupCommand::List => {
            let listing = backups.list().await?;
            if let Some(error) = &listing.s3_error {
                eprintln!("ddms: cannot list the S3 copies: {error}");
            }
            print_json(&listing, true);
            anyhow::ensure!(listing.s3_error.is_none(), "the S3 listing failed");
        }
        BackupCommand::Verify { backup } => {
            let verified = backups.verify(&backup).await?;
            let manifest = &verified.manifest;
            eprintln!("backup {} is intact: {}", manifest.name, manifest.summary());
            print_json(manifest, true);
        }
        BackupCommand::Restore { backup, force } => {
            let manifest = backups.restore(&backup, force).await?;
            audit_cli(
                store.as_ref(),
                "backup.restore",
                format!("backup:{}", manifest.name),
                serde_json::json!({ "replaced": force, "rows": manifest.rows() }),
            )
            .await?;
            println!("restored backup {} ({})", manifest.name, manifest.summary());
        }
    }
    Ok(())
}
