//! `cargo xtask schema-compat`: expand/contract, checked by running it. A blue-green deploy
//! runs the previous release and the new one side by side on one database after the new one's
//! `ddms migrate` (and a rollback runs the previous one there for good), so the previous
//! release's binary must keep reading and writing on the new schema. This builds the previous
//! release's `ddms` from its own tree ([`previous`] says which release that is), migrates a
//! fresh database with the new `ddms`, and runs the window ([`scenario`]) on SQLite and
//! PostgreSQL. Its static half is the migrations lint (xtask/src/tidy/migrations.rs). Its
//! tests (`tests.rs`) show the window failing on a destructive change.

mod background;
// The binary the end-to-end tests run: `DDMS_E2E_DDMS`, else the workspace's debug build
// (for this module's tests and deploy/database_role_tests.rs).
#[cfg(test)]
#[path = "../../tests/e2e/support/ddms_binary.rs"]
pub(crate) mod ddms_binary;
mod previous;
mod scenario;
pub(crate) mod services;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

pub use background::BackgroundBuild;
pub use previous::PREVIOUS_ENV;
use services::{Ddms, Postgres};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const ALL_BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

pub struct Options {
    /// A commit-ish instead of the rule in [`previous`].
    pub previous: Option<String>,
    pub backends: Vec<Backend>,
    /// Build the new tree with --locked (CI); the previous release always builds --locked.
    pub locked: bool,
    /// The new tree's binary when the caller has built it already (`test`: the one its
    /// earlier steps ran); otherwise a debug build is made. `cargo build -p ddms` alone resolves
    /// other dependency features than the workspace build before it, so it recompiled ~130 s
    /// of dependencies that the run had just built.
    pub new_binary: Option<PathBuf>,
}

pub fn run(sh: &Shell, options: &Options) -> Result<()> {
    let (previous, old_binary) = build_previous(sh, options.previous.as_deref())?;
    let target = crate::build::target_dir(sh)?;
    let new_binary = match &options.new_binary {
        Some(binary) => binary.clone(),
        None => {
            let locked = options.locked.then_some("--locked");
            cmd!(sh, "cargo build {locked...} -p ddms --bin ddms").run()?;
            target.join("debug/ddms")
        }
    };
    for binary in [&old_binary, &new_binary] {
        let version = cmd!(sh, "{binary} --version").quiet().read()?;
        println!("schema-compat: {version} ({})", binary.display());
    }

    for &backend in &options.backends {
        let started = Instant::now();
        let migrations = migration_files(sh, backend)?;
        let result = Database::fresh(backend).and_then(|database| {
            scenario::run(
                &database.ddms("old", &old_binary),
                &database.ddms("new", &new_binary),
                migrations,
            )
        });
        result.with_context(|| {
            format!(
                "the previous release ({}) does not work on the schema the new release \
                 migrated ({backend:?}): a migration takes away or tightens something it uses. \
                 Ship the expand step now and the contract step in a later release \
                 (docs/deploying.md, \"Schema changes\")",
                previous.short()
            )
        })?;
        println!(
            "schema-compat: {backend:?}: the previous release reads and writes beside the new \
             one ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Chooses the previous release (`given`, else the rule in [`previous`]) and builds its
/// `ddms`: the release and a copy of its binary. A second call for the same release builds
/// nothing.
pub fn build_previous(sh: &Shell, given: Option<&str>) -> Result<(previous::Previous, PathBuf)> {
    let previous = previous::choose(sh, given)?;
    println!(
        "schema-compat: previous release {}: {}",
        previous.short(),
        previous.reason
    );
    let work = work_dir(sh)?;
    sh.create_dir(&work)?;
    let started = Instant::now();
    let binary = previous::build(sh, &previous, &work)?;
    println!(
        "schema-compat: previous release built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok((previous, binary))
}

/// Where the previous release's tree, target directory and binary live.
fn work_dir(sh: &Shell) -> Result<PathBuf> {
    Ok(crate::build::target_dir(sh)?.join("schema-compat"))
}

/// How many migration files the tree holds for `backend`.
fn migration_files(sh: &Shell, backend: Backend) -> Result<usize> {
    let folder = match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    };
    Ok(sh
        .read_dir(folder)?
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .count())
}

/// A fresh, empty database of one backend — a SQLite file, or a PostgreSQL of its own — in a
/// temporary directory that goes with it.
struct Database {
    dir: PathBuf,
    postgres: Option<Postgres>,
    url: String,
}

impl Database {
    fn fresh(backend: Backend) -> Result<Database> {
        // Unique within the process too: the tests make databases side by side.
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ddms-schema-compat-{backend:?}-{}-{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // From here on, Drop removes the directory.
        let mut database = Database {
            dir,
            postgres: None,
            url: String::new(),
        };
        match backend {
            Backend::Postgres => {
                let postgres = Postgres::start(&database.dir.join("postgres"))?;
                database.url = postgres.url();
                database.postgres = Some(postgres);
            }
            Backend::Sqlite => {
                database.url = format!("sqlite://{}", database.sqlite_file().display());
            }
        }
        Ok(database)
    }

    fn sqlite_file(&self) -> PathBuf {
        self.dir.join("ddms.db")
    }

    /// `binary` configured for this database, `label` in the scenario's messages and logs.
    fn ddms(&self, label: &str, binary: &Path) -> Ddms {
        Ddms {
            label: label.to_string(),
            binary: binary.to_path_buf(),
            dir: self.dir.clone(),
            database_url: self.url.clone(),
            provisioning_token: "schema-compat-provisioning-token".into(),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // PostgreSQL stops before its files go.
        drop(self.postgres.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
