//! The N-1 window shown to catch a destructive migration, on SQLite and PostgreSQL, cheaply
//! enough for every `cargo test -p xtask`: the current `ddms` plays both releases, so it needs
//! no build of its own. On a database the new release migrated the window passes (so the check
//! cannot pass vacuously); once a column the previous release writes and reads is renamed
//! there, as a contract step shipped too early would, it fails naming the step and the column.

use std::process::Command;

use anyhow::{ensure, Result};
use xshell::Shell;

use super::services::DATABASE;
use super::{ddms_binary, migration_files, scenario, Backend, Database};

/// A contract step applied before its time: `ddms user add` writes the column, login reads it.
const RENAME: &str = "ALTER TABLE users RENAME COLUMN password_hash TO password_digest";

/// The window with the current `ddms` as both releases, on a fresh `backend` database that the
/// new one migrated and `destructive` (when given) then changed.
fn window(backend: Backend, destructive: Option<&str>) -> Result<()> {
    let ddms = ddms_binary::ddms_binary()?;
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    let migrations = migration_files(&sh, backend)?;
    let database = Database::fresh(backend)?;
    let new = database.ddms("new", ddms);
    new.run(&["migrate"], "")?;
    if let Some(sql) = destructive {
        database.execute(sql)?;
    }
    // Its own `ddms migrate` finds nothing left to apply.
    scenario::run(&database.ddms("old", ddms), &new, migrations)
}

impl Database {
    /// Runs `sql` on the database: with psql, or with Python's sqlite3 module (both among the
    /// suite's prerequisites; the sqlite3 shell is not).
    fn execute(&self, sql: &str) -> Result<()> {
        if let Some(postgres) = &self.postgres {
            return postgres.psql(DATABASE, sql);
        }
        let status = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 db = sqlite3.connect(sys.argv[1])\n\
                 db.executescript(sys.argv[2])\n\
                 db.close()",
            ])
            .arg(self.sqlite_file())
            .arg(sql)
            .status()?;
        ensure!(
            status.success(),
            "{sql} on {}: python3 {status}",
            self.sqlite_file().display()
        );
        Ok(())
    }
}

fn passes_until_a_column_it_uses_is_renamed(backend: Backend) {
    if let Err(e) = window(backend, None) {
        panic!("{backend:?}: the window fails on the migrated schema itself: {e:#}");
    }
    let error = match window(backend, Some(RENAME)) {
        Ok(()) => panic!("{backend:?}: the window passed after `{RENAME}`"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("ddms user add") && error.contains("password_hash"),
        "{backend:?}: the failure after `{RENAME}` does not name the step (`ddms user add`) and \
         the column (`password_hash`): {error}"
    );
    println!("{backend:?}: after `{RENAME}` the window failed, as it should: {error}");
}

#[test]
fn the_window_on_sqlite_fails_once_a_column_the_previous_release_uses_is_renamed() {
    passes_until_a_column_it_uses_is_renamed(Backend::Sqlite);
}

#[test]
fn the_window_on_postgres_fails_once_a_column_the_previous_release_uses_is_renamed() {
    passes_until_a_column_it_uses_is_renamed(Backend::Postgres);
}
