//! The column lists the shared alerting SQL (`shared.rs`) reads (the records decode from their
//! rows themselves: `sqlx::FromRow` in `mod.rs`), and how a foreign key naming nothing is
//! reported.

/// Channel columns: the secret itself stays in the database.
pub(super) const CHANNEL_COLUMNS: &str = "id, name, kind, settings, \
     secret IS NOT NULL AS has_secret, allow_private, created_at, updated_at";

pub(super) const ALERT_COLUMNS: &str = "id, rule_id, device_id, metric, state, value, \
     pending_since, started_at, resolved_at, last_notified_at, last_eval_ts, acknowledged_by, \
     acknowledged_at, ack_comment, seq, created_at";

/// A foreign key naming something that does not exist is the caller's mistake, not a fault.
pub(super) fn dangling(what: &'static str) -> impl Fn(sqlx::Error) -> crate::store::StoreError {
    move |err| match &err {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            crate::store::StoreError::Conflict(format!("{what} does not exist"))
        }
        _ => err.into(),
    }
}
