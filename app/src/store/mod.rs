//! Persistence behind one trait with two implementations: SQLite (the embedded default) and
//! PostgreSQL (production). The backend is chosen by the database URL's scheme. Both are held to
//! the same behaviour by one conformance suite (`tests/it/storage.rs`).
//!
//! [`Store`] is made of one sub-trait per domain (devices, readings, accounts, …), so that each
//! backend, a directory (`sqlite/`, `postgres/`), implements each domain in a file of its own.

pub mod alerts;
mod common;
mod models;
mod postgres;
pub mod snapshot;
mod sqlite;
mod token_cache;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

pub use alerts::AlertStore;
pub use models::*;
pub use postgres::PostgresStore;
pub use snapshot::{Snapshot, SnapshotTable};
pub use sqlite::SqliteStore;
pub use token_cache::{LAST_USE_RESOLUTION, TOKEN_CACHE_TTL};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness constraint refused the write (e.g. a device name already taken).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The rows themselves cannot be stored (a value no column of ours may hold), checked before
    /// the database sees them so both backends refuse the same rows the same way.
    #[error("refused: {0}")]
    Refused(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.message().to_string())
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(err.to_string()),
            // A stored value that does not decode (a malformed UUID, timestamp or JSON text).
            sqlx::Error::ColumnDecode { index, source } => {
                StoreError::Corrupt(format!("{index}: {source}"))
            }
            _ => StoreError::Database(err),
        }
    }
}

impl StoreError {
    /// Whether the same write may succeed later: the database is unreachable, busy or in a
    /// passing state (a deadlock victim, a failover, a partition being attached). Anything else
    /// fails the same way every time, so the batch writer isolates the submission that causes
    /// it instead of holding everyone's readings.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Database(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| transient_code(&code, db.message())),
            StoreError::Database(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            _ => false,
        }
    }

    /// Whether the database refused the rows themselves (a value the column cannot hold, a
    /// constraint, a trigger's exception), so the same rows fail the same way every time.
    /// Narrower than "not transient" on purpose: the batch writer refuses (and so lets MQTT
    /// acknowledge away) only submissions the database is known to reject; any error it does
    /// not recognise holds the batch instead, so it never drops readings it could store later.
    pub fn is_refusal(&self) -> bool {
        match self {
            StoreError::NotFound | StoreError::Conflict(_) | StoreError::Refused(_) => true,
            StoreError::Database(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| refusal_code(&code, db.message())),
            _ => false,
        }
    }
}

/// Database codes that refuse the data itself (see [`StoreError::is_refusal`]).
fn refusal_code(code: &str, message: &str) -> bool {
    if let Ok(sqlite) = code.parse::<u32>() {
        if code.len() != 5 {
            // SQLITE_TOOBIG, SQLITE_CONSTRAINT (triggers, foreign keys, checks), SQLITE_MISMATCH,
            // SQLITE_RANGE (primary code, low byte).
            return matches!(sqlite & 0xff, 18 | 19 | 20 | 25);
        }
    }
    let class = code.get(..2).unwrap_or_default();
    // 22 data exception (e.g. 22003 numeric value out of range), 23 integrity constraint, P0 an
    // exception raised by a trigger — but not the partition race, which passes.
    matches!(class, "22" | "23" | "P0") && !transient_code(code, message)
}

/// PostgreSQL SQLSTATEs are five characters; SQLite codes are (extended) result numbers.
fn transient_code(code: &str, message: &str) -> bool {
    if let Ok(sqlite) = code.parse::<u32>() {
        if code.len() != 5 {
            // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL (primary code, low byte).
            return matches!(sqlite & 0xff, 5 | 6 | 10 | 13);
        }
    }
    let class = code.get(..2).unwrap_or_default();
    // 08 connection, 40 rollback (deadlock, serialization), 53 resources, 57 operator
    // intervention (shutdown, statement timeout), 58 system error; 55P03 lock not available;
    // 25006 read-only transaction (a failover in progress).
    matches!(class, "08" | "40" | "53" | "57" | "58")
        || code == "55P03"
        || code == "25006"
        // A row routed to the default partition while the day's partition was attached (an
        // older release creates partitions without the lock that orders them after inserts).
        || (code == "23514" && message.contains("partition constraint"))
}

/// Refuses a batch holding a value no reading may be stored with: a NaN or an infinity would
/// poison every rollup of its bucket, and SQLite would bind a NaN as NULL. Producers refuse such
/// values already (`ingest::limits`); this is the store's own guard, so no caller can get past it.
pub(crate) fn refuse_non_finite(readings: &[Reading]) -> StoreResult<()> {
    match readings.iter().find(|r| !r.value.is_finite()) {
        Some(bad) => Err(StoreError::Refused(format!(
            "series {}: value {} is not a finite number",
            bad.series, bad.value
        ))),
        None => Ok(()),
    }
}

/// The batch in (series, ts) order, the order of the readings' primary key: inserted in key
/// order, consecutive rows land on the same index leaf page instead of one page per series and
/// reading. On PostgreSQL a 10,000-reading batch of 1,000 series (ten readings each, as a fleet's
/// batch arrives: by time, then by series) took 30–40 % less server time sorted. The sort is
/// stable, so of two readings with the same key the first one is still the one stored.
pub(crate) fn in_key_order(readings: &[Reading]) -> std::borrow::Cow<'_, [Reading]> {
    let key = |r: &Reading| (r.series, r.ts);
    if readings.is_sorted_by_key(key) {
        std::borrow::Cow::Borrowed(readings)
    } else {
        let mut sorted = readings.to_vec();
        sorted.sort_by_key(key);
        std::borrow::Cow::Owned(sorted)
    }
}

/// The conflict of a change that would leave no enabled owner (nobody could administer ddms).
pub const LAST_OWNER: &str = "it would leave no enabled owner";
/// Enabled owners; a user change or deletion that brings this to 0 is rolled back.
const ENABLED_OWNERS: &str =
    "SELECT count(*) FROM users WHERE role = 'owner' AND disabled_at IS NULL";

pub type StoreResult<T> = Result<T, StoreError>;

#[cfg(test)]
mod key_order_tests {
    use chrono::{TimeZone, Utc};

    use super::{in_key_order, Reading};

    fn reading(series: i64, second: i64, value: f64) -> Reading {
        Reading {
            series,
            ts: Utc.timestamp_opt(second, 0).unwrap(),
            value,
        }
    }

    #[test]
    fn a_batch_is_put_in_key_order_and_the_first_of_a_duplicate_stays_first() {
        let batch = [
            reading(2, 10, 1.0),
            reading(1, 10, 2.0),
            reading(2, 5, 3.0),
            reading(1, 10, 4.0),
        ];
        let sorted = in_key_order(&batch);
        assert!(matches!(sorted, std::borrow::Cow::Owned(_)));
        assert_eq!(
            *sorted,
            [
                reading(1, 10, 2.0),
                reading(1, 10, 4.0),
                reading(2, 5, 3.0),
                reading(2, 10, 1.0),
            ]
        );
        // Already in order: no copy.
        assert!(matches!(
            in_key_order(&sorted),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}

#[cfg(test)]
mod transient_tests {
    use super::{refusal_code, transient_code};

    #[test]
    fn failures_that_pass_are_told_from_those_that_do_not() {
        // PostgreSQL: connection, deadlock, too many connections, shutdown, failover, the
        // partition race; SQLite: busy, busy snapshot (517), locked, disk full.
        for code in [
            "08006", "40P01", "40001", "53300", "57P01", "25006", "55P03", "5", "517", "6", "13",
        ] {
            assert!(transient_code(code, ""), "{code}");
        }
        assert!(transient_code(
            "23514",
            "new row for relation \"readings_default\" violates partition constraint"
        ));
        // Value out of range, a check constraint, a raised exception, SQLite constraint (1811
        // from a trigger, 787 foreign key).
        for code in ["22003", "23514", "23503", "P0001", "1811", "787", "19"] {
            assert!(!transient_code(code, "other"), "{code}");
            assert!(refusal_code(code, "other"), "{code}");
        }
        // Neither known to pass nor a refusal of the data: the batch writer holds these rather
        // than refusing readings (a schema mismatch, an internal error, SQLite's generic 1).
        for code in ["42703", "XX000", "1", "11"] {
            assert!(
                !transient_code(code, "other") && !refusal_code(code, "other"),
                "{code}"
            );
        }
        for code in ["08006", "40001", "57P01", "5", "13"] {
            assert!(!refusal_code(code, ""), "{code}");
        }
        assert!(!refusal_code(
            "23514",
            "new row for relation \"readings_default\" violates partition constraint"
        ));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Applied vs. embedded migrations, for `/ready` and `ddms migrate`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStatus {
    pub applied: Vec<i64>,
    pub pending: Vec<i64>,
    /// Versions in the database this binary does not know: a newer release migrated it. Fine
    /// under expand/contract, but worth showing.
    pub unknown: Vec<i64>,
}

impl MigrationStatus {
    fn compare(migrator: &sqlx::migrate::Migrator, applied: Vec<i64>) -> Self {
        let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        MigrationStatus {
            pending: known
                .iter()
                .copied()
                .filter(|v| !applied.contains(v))
                .collect(),
            unknown: applied
                .iter()
                .copied()
                .filter(|v| !known.contains(v))
                .collect(),
            applied,
        }
    }

    pub fn is_current(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The whole persistence interface, one sub-trait per domain so that each backend keeps each
/// domain in a file of its own (`sqlite/`, `postgres/`); alerting is [`AlertStore`]
/// (`store/alerts/`). Their methods are callable on `dyn Store` (so on `Arc<dyn Store>`) without
/// importing the sub-traits; only calls on a concrete backend type need them in scope.
#[async_trait]
pub trait Store:
    DeviceStore
    + ReadingStore
    + AccountStore
    + StatusStore
    + SettingsStore
    + EventLogStore
    + LeaseStore
    + SnapshotStore
    + AlertStore
    + Send
    + Sync
    + 'static
{
    fn backend(&self) -> Backend;

    /// Cheap round trip to the database, bounded by `timeout`.
    async fn ping(&self, timeout: Duration) -> StoreResult<()>;
    async fn migrate(&self) -> StoreResult<MigrationStatus>;
    async fn migration_status(&self) -> StoreResult<MigrationStatus>;
    /// [`Store::migration_status`] for readiness probes: once every migration this binary
    /// knows is applied it stays applied (migrations are expand-only and never undone), so a
    /// current status is remembered and the database is not asked again.
    async fn probe_migrations(&self) -> StoreResult<MigrationStatus>;
    /// Copies what the write-ahead log holds into the database file, off the write path: on
    /// SQLite from a connection of its own, while the writer goes on committing (the server
    /// calls it every [`CHECKPOINT_INTERVAL`]); PostgreSQL checkpoints by itself.
    async fn checkpoint(&self) -> StoreResult<()>;
}

/// How often the server asks the store to [checkpoint](Store::checkpoint).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Groups, devices, their series and their MQTT credentials: what a device is, as configured.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    async fn create_group(&self, name: &str) -> StoreResult<Group>;
    async fn list_groups(&self) -> StoreResult<Vec<Group>>;
    /// Deletes a group; its devices stay, without a group.
    async fn delete_group(&self, id: Uuid) -> StoreResult<()>;

    async fn create_device(&self, device: &NewDevice) -> StoreResult<Device>;
    async fn get_device(&self, id: Uuid) -> StoreResult<Device>;
    async fn list_devices(&self) -> StoreResult<Vec<Device>>;
    /// Every device's [`DeviceVersion`], in no particular order.
    async fn list_device_versions(&self) -> StoreResult<Vec<DeviceVersion>>;
    async fn update_device(&self, id: Uuid, device: &NewDevice) -> StoreResult<Device>;
    async fn delete_device(&self, id: Uuid) -> StoreResult<()>;

    /// Returns the id of the (device, metric) series, creating it on first use.
    async fn ensure_series(
        &self,
        device_id: Uuid,
        metric: &str,
        unit: Option<&str>,
    ) -> StoreResult<SeriesId>;
    /// The series of a device's metric, if it has readings (or had).
    async fn find_series(&self, device_id: Uuid, metric: &str) -> StoreResult<Option<SeriesId>>;
    /// Every series of a device: (metric, id, unit).
    async fn device_series(
        &self,
        device_id: Uuid,
    ) -> StoreResult<Vec<(String, SeriesId, Option<String>)>>;

    /// Sets (replacing) the MQTT credentials of a device.
    async fn put_mqtt_credentials(&self, credentials: &MqttCredentials) -> StoreResult<()>;
    async fn find_mqtt_credentials(&self, username: &str) -> StoreResult<MqttCredentials>;
}

/// Readings and their rollups: the ingest write path, the query paths, and retention.
#[async_trait]
pub trait ReadingStore: Send + Sync {
    /// Makes sure reading partitions exist from yesterday to `days_ahead` days ahead; returns how
    /// many were created. A no-op on backends without partitions.
    async fn ensure_partitions(&self, today: DateTime<Utc>, days_ahead: u32) -> StoreResult<u32>;
    /// Inserts a batch in one transaction; readings already stored for (series, ts) are ignored.
    /// The new ones (only those) are added to the 1-minute and 1-hour rollups in the same
    /// transaction. Returns how many were new.
    async fn insert_readings(&self, readings: &[Reading]) -> StoreResult<u64>;
    /// Readings of one series with `from <= ts < to`, oldest first, at most `limit`.
    async fn query_readings(
        &self,
        series: SeriesId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Point>>;
    /// Rollup buckets of one series overlapping `[from, to)` (buckets starting at or after the
    /// bucket holding `from`, and before `to`), oldest first, at most `limit`.
    async fn query_rollups(
        &self,
        series: SeriesId,
        step: RollupStep,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Bucket>>;
    /// The newest reading of every series of a device.
    async fn latest_readings(&self, device_id: Uuid) -> StoreResult<Vec<LatestReading>>;
    /// Deletes readings older than `before` and the rollup buckets that lie wholly before it
    /// (retention). Works in small steps so that ingest is never locked out for long.
    async fn prune_readings(&self, before: DateTime<Utc>) -> StoreResult<PruneCounts>;
    /// About how many readings lie before `before`: those of the hourly rollup buckets that end
    /// by then (cheap on any size; the partial hour is not counted). For the retention warning.
    async fn count_readings_before(&self, before: DateTime<Utc>) -> StoreResult<u64>;
}

/// Who may do what and who did: users, their sessions, API tokens, and the audit log.
#[async_trait]
pub trait AccountStore: Send + Sync {
    async fn create_user(&self, user: &NewUser) -> StoreResult<User>;
    async fn find_user(&self, username: &str) -> StoreResult<User>;
    async fn count_users(&self) -> StoreResult<u64>;
    async fn get_user(&self, id: Uuid) -> StoreResult<User>;
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// Refused with [`StoreError::Conflict`] ([`LAST_OWNER`]) when it would leave no enabled
    /// owner; checked in the same transaction as the change, so concurrent changes cannot
    /// both pass.
    async fn update_user(&self, id: Uuid, change: &UserChange) -> StoreResult<User>;
    /// Deletes a user and (by cascade) their sessions.
    /// Refused like [`AccountStore::update_user`] when it would leave no enabled owner.
    async fn delete_user(&self, id: Uuid) -> StoreResult<()>;

    async fn create_session(&self, session: &NewSession) -> StoreResult<()>;
    /// The session with this id hash, joined with its user.
    async fn find_session(&self, id_hash: &str) -> StoreResult<SessionRecord>;
    /// Records activity (the idle timeout counts from the last one).
    async fn touch_session(&self, id_hash: &str, at: DateTime<Utc>) -> StoreResult<()>;
    /// Returns whether there was such a session.
    async fn delete_session(&self, id_hash: &str) -> StoreResult<bool>;
    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64>;
    /// Ends every session of the user except `keep` (by its id hash).
    async fn delete_other_sessions(&self, user_id: Uuid, keep: &str) -> StoreResult<u64>;
    /// Deletes sessions past their absolute end or idle since before `idle_before`.
    async fn prune_sessions(
        &self,
        now: DateTime<Utc>,
        idle_before: DateTime<Utc>,
    ) -> StoreResult<u64>;

    async fn create_api_token(&self, token: &NewApiToken) -> StoreResult<ApiToken>;
    /// Looks up a live (not revoked) token by the hash of its secret and records its use, both
    /// coarsely (`token_cache`): a lookup is reused in process for [`TOKEN_CACHE_TTL`] (so a
    /// revocation takes that long to be seen) and `last_used_at` is written at most once per
    /// [`LAST_USE_RESOLUTION`].
    async fn authenticate_api_token(&self, token_hash: &str) -> StoreResult<ApiToken>;
    /// Every token, revoked ones included (newest first); never their hashes.
    async fn list_api_tokens(&self) -> StoreResult<Vec<ApiToken>>;
    /// Revokes a token (kept for the record); `NotFound` when there is no live token `id`.
    async fn revoke_api_token(&self, id: Uuid) -> StoreResult<ApiToken>;

    /// The audit log is append-only: there is deliberately no method to change or delete an
    /// entry.
    async fn append_audit(&self, entry: &NewAuditEntry) -> StoreResult<()>;
    /// The newest `limit` entries, newest first.
    async fn list_audit(&self, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        self.list_audit_before(None, limit).await
    }
    /// Like [`AccountStore::list_audit`], only entries with an id below `before` (paging).
    async fn list_audit_before(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>>;
}

/// What the status board (`crate::status`) keeps: each device's last known status, and the
/// notifications it opens (e.g. after repeated connection failures) until they clear.
#[async_trait]
pub trait StatusStore: Send + Sync {
    /// Records a device's status (one row per device, replaced).
    async fn put_device_status(&self, status: &DeviceStatus) -> StoreResult<()>;
    async fn list_device_status(&self) -> StoreResult<Vec<DeviceStatus>>;

    /// Opens a notification unless one of the same kind is already open for the device; returns
    /// the open one either way.
    async fn open_notification(&self, n: &NewNotification) -> StoreResult<Notification>;
    async fn list_open_notifications(&self, kind: &str) -> StoreResult<Vec<Notification>>;
    async fn acknowledge_notification(&self, id: Uuid, by: &str) -> StoreResult<Notification>;
    /// Clears (resolves) the open notification of a kind for a device, if any.
    async fn clear_notification(&self, kind: &str, device_id: Uuid) -> StoreResult<bool>;
}

/// Runtime settings (`crate::settings`): what owners change without a restart, shared by every
/// instance on the database, as JSON values by key.
#[async_trait]
pub trait SettingsStore: Send + Sync {
    async fn get_setting(&self, key: &str) -> StoreResult<Option<serde_json::Value>>;
    async fn put_setting(&self, key: &str, value: &serde_json::Value) -> StoreResult<()>;
}

/// The live event log behind `GET /api/stream` (`crate::events`), shared by every instance on
/// the database so that they stream the same events under the same ids.
#[async_trait]
pub trait EventLogStore: Send + Sync {
    /// Appends events to the live event log in one transaction; their ids become visible in
    /// id order (no later reader can see id n+1 before id n).
    async fn append_events(&self, events: &[NewEvent]) -> StoreResult<()>;
    /// Events with `after < id <= upto` (no upper bound when `None`), oldest first, at most `limit`.
    async fn events_after(
        &self,
        after: i64,
        upto: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>>;
    /// (oldest, newest) id still in the log; `None` when it is empty.
    async fn event_bounds(&self) -> StoreResult<Option<(i64, i64)>>;
    /// Deletes events created before `before`, keeping at least the newest one so that ids
    /// keep increasing; returns how many went.
    async fn prune_events(&self, before: DateTime<Utc>) -> StoreResult<u64>;
}

/// Leases among the instances sharing the database, for work that only one may do at a time
/// (polling a Modbus device, retention, scheduled backups).
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes or renews the named leases for `holder` for `ttl`; a lease held by another holder
    /// is taken only once it has expired. Returns the names `holder` now holds.
    async fn acquire_leases(
        &self,
        names: &[String],
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Vec<String>>;
    /// Gives up leases at once (graceful shutdown), so another instance takes over immediately.
    async fn release_leases(&self, names: &[String], holder: &str) -> StoreResult<()>;
}

/// Backups: the whole database as a snapshot, out and back in (formats in [`snapshot`]).
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// Writes a consistent copy of every table in [`snapshot::SNAPSHOT_TABLES`] into the empty
    /// directory `dir`, in this backend's format (see [`snapshot`]).
    async fn export_snapshot(&self, dir: &Path) -> StoreResult<Snapshot>;
    /// Loads a snapshot of this backend from `dir`, all or nothing, into a migrated database
    /// that is empty (else `Conflict`) or, with `replace`, whose contents it replaces. A row
    /// count that differs from the snapshot's is `Corrupt` and rolls the load back.
    async fn import_snapshot(
        &self,
        dir: &Path,
        snapshot: &Snapshot,
        replace: bool,
    ) -> StoreResult<()>;
    /// Tables of the schema that snapshots neither hold nor leave out on purpose (a test keeps
    /// this empty).
    async fn tables_outside_snapshots(&self) -> StoreResult<Vec<String>>;
}

/// A remembered current [`MigrationStatus`] (see [`Store::probe_migrations`]).
#[derive(Debug, Default)]
struct CurrentMigrations(std::sync::OnceLock<MigrationStatus>);

impl CurrentMigrations {
    async fn get_or_check(
        &self,
        check: impl std::future::Future<Output = StoreResult<MigrationStatus>>,
    ) -> StoreResult<MigrationStatus> {
        if let Some(status) = self.0.get() {
            return Ok(status.clone());
        }
        let status = check.await?;
        if status.is_current() {
            let _ = self.0.set(status.clone());
        }
        Ok(status)
    }
}

/// Runs a health query with a deadline: a database that hangs is as unavailable as one that
/// refuses.
async fn bounded<T>(
    timeout: Duration,
    query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> StoreResult<()> {
    match tokio::time::timeout(timeout, query).await {
        Ok(result) => result
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string())),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Connects to the backend named by the URL's scheme. Does not migrate.
pub async fn connect(
    url: &SecretString,
    max_connections: u32,
    connect_timeout: Duration,
) -> StoreResult<Arc<dyn Store>> {
    let raw = url.expose_secret();
    if raw.starts_with("postgres:") || raw.starts_with("postgresql:") {
        Ok(Arc::new(
            PostgresStore::connect(raw, max_connections, connect_timeout).await?,
        ))
    } else if let Some(path) = raw.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        Ok(Arc::new(
            SqliteStore::open(path, max_connections, connect_timeout).await?,
        ))
    } else {
        Err(StoreError::Unavailable(
            "database.url must start with sqlite:// or postgres://".into(),
        ))
    }
}
