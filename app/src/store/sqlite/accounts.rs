//! [`AccountStore`] on SQLite: users, sessions, API tokens and the audit log. User changes run
//! in a transaction that holds the write lock from its start (`BEGIN IMMEDIATE`), so that the
//! last enabled owner cannot be taken away by two changes at once.

use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::Row;
use uuid::Uuid;

use super::{json, token_cache, uuid, SqliteStore};
use crate::store::{
    AccountStore, ApiToken, AuditEntry, NewApiToken, NewAuditEntry, NewSession, NewUser, Role,
    SessionRecord, StoreError, StoreResult, User, UserChange, ENABLED_OWNERS, LAST_OWNER,
};

fn role(row: &SqliteRow) -> StoreResult<Role> {
    let text: String = row.try_get("role")?;
    text.parse().map_err(StoreError::Corrupt)
}

fn user_from_row(row: &SqliteRow) -> StoreResult<User> {
    Ok(User {
        id: uuid(row, "id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        role: role(row)?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}

fn token_from_row(row: &SqliteRow) -> StoreResult<ApiToken> {
    Ok(ApiToken {
        id: uuid(row, "id")?,
        name: row.try_get("name")?,
        role: role(row)?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

const USER_COLUMNS: &str = "id, username, password_hash, role, created_at, disabled_at";
const TOKEN_COLUMNS: &str = "id, name, role, created_at, last_used_at, revoked_at";

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_user(&self, user: &NewUser) -> StoreResult<User> {
        let row = sqlx::query(&format!(
            "INSERT INTO users (id, username, password_hash, role, created_at) \
             VALUES (?, ?, ?, ?, ?) RETURNING {USER_COLUMNS}"
        ))
        .bind(Uuid::now_v7().to_string())
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(Utc::now())
        .fetch_one(&self.pool)
        .await?;
        user_from_row(&row)
    }

    async fn find_user(&self, username: &str) -> StoreResult<User> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = ?"
        ))
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        user_from_row(&row)
    }

    async fn count_users(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<User> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?;
        user_from_row(&row)
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(&self, id: Uuid, change: &UserChange) -> StoreResult<User> {
        let disabled_at: Option<Option<DateTime<Utc>>> = change.disabled.map(|d| d.then(Utc::now));
        let (mut tx, owners_before) = lock_owners(&self.pool).await?;
        let row = sqlx::query(&format!(
            "UPDATE users SET role = coalesce(?, role), password_hash = coalesce(?, password_hash), \
             disabled_at = CASE WHEN ? THEN ? ELSE disabled_at END \
             WHERE id = ? RETURNING {USER_COLUMNS}"
        ))
        .bind(change.role.map(Role::as_str))
        .bind(change.password_hash.as_deref())
        .bind(disabled_at.is_some())
        .bind(disabled_at.flatten())
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let user = user_from_row(&row)?;
        keep_an_owner(tx, owners_before).await?;
        Ok(user)
    }

    async fn delete_user(&self, id: Uuid) -> StoreResult<()> {
        let (mut tx, owners_before) = lock_owners(&self.pool).await?;
        let done = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        keep_an_owner(tx, owners_before).await
    }

    async fn create_session(&self, session: &NewSession) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, last_seen_at, \
             expires_at, remote_addr) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&session.id_hash)
        .bind(session.user_id.to_string())
        .bind(&session.csrf_hash)
        .bind(session.created_at)
        .bind(session.created_at)
        .bind(session.expires_at)
        .bind(&session.remote_addr)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_session(&self, id_hash: &str) -> StoreResult<SessionRecord> {
        let row = sqlx::query(
            "SELECT s.id_hash, s.csrf_token, s.created_at AS s_created_at, s.last_seen_at, \
             s.expires_at, u.id, u.username, u.password_hash, u.role, u.created_at, u.disabled_at \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ?",
        )
        .bind(id_hash)
        .fetch_one(&self.pool)
        .await?;
        Ok(SessionRecord {
            id_hash: row.try_get("id_hash")?,
            user: user_from_row(&row)?,
            csrf_hash: row.try_get("csrf_token")?,
            created_at: row.try_get("s_created_at")?,
            last_seen_at: row.try_get("last_seen_at")?,
            expires_at: row.try_get("expires_at")?,
        })
    }

    async fn touch_session(&self, id_hash: &str, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?")
            .bind(at)
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM sessions WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(user_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn delete_other_sessions(&self, user_id: Uuid, keep: &str) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = ? AND id_hash <> ?")
            .bind(user_id.to_string())
            .bind(keep)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn prune_sessions(
        &self,
        now: DateTime<Utc>,
        idle_before: DateTime<Utc>,
    ) -> StoreResult<u64> {
        // Timestamps are RFC 3339 text written by one encoder: they compare as text.
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at < ?")
            .bind(now)
            .bind(idle_before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn create_api_token(&self, token: &NewApiToken) -> StoreResult<ApiToken> {
        let row = sqlx::query(&format!(
            "INSERT INTO api_tokens (id, name, token_hash, role, created_at) VALUES (?, ?, ?, ?, ?) \
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(Uuid::now_v7().to_string())
        .bind(&token.name)
        .bind(&token.token_hash)
        .bind(token.role.as_str())
        .bind(Utc::now())
        .fetch_one(&self.pool)
        .await?;
        token_from_row(&row)
    }

    async fn authenticate_api_token(&self, token_hash: &str) -> StoreResult<ApiToken> {
        if let Some(token) = self.tokens.get(token_hash, Instant::now()) {
            return Ok(token);
        }
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL"
        ))
        .bind(token_hash)
        .fetch_one(&self.pool)
        .await?;
        let mut token = token_from_row(&row)?;
        let now = Utc::now();
        if token_cache::last_use_is_stale(token.last_used_at, now) {
            token.last_used_at = sqlx::query_scalar(
                "UPDATE api_tokens SET last_used_at = ? WHERE id = ? RETURNING last_used_at",
            )
            .bind(now)
            .bind(token.id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .or(token.last_used_at);
        }
        self.tokens.put(token_hash, token.clone(), Instant::now());
        Ok(token)
    }

    async fn list_api_tokens(&self) -> StoreResult<Vec<ApiToken>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_api_token(&self, id: Uuid) -> StoreResult<ApiToken> {
        let row = sqlx::query(&format!(
            "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL \
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(Utc::now())
        .bind(id.to_string())
        .fetch_one(&self.pool)
        .await?;
        // This instance refuses the token at once; others within the cache's TTL.
        self.tokens.forget(id);
        token_from_row(&row)
    }

    async fn append_audit(&self, entry: &NewAuditEntry) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, detail, remote_addr) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(Utc::now())
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(entry.detail.to_string())
        .bind(&entry.remote_addr)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_audit_before(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail, remote_addr FROM audit_log \
             WHERE id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    detail: json(row, "detail")?,
                    remote_addr: row.try_get("remote_addr")?,
                })
            })
            .collect()
    }
}

/// A transaction that holds SQLite's write lock from its start (`BEGIN IMMEDIATE`), so no
/// other change to users can come between its owner counts; and the owners before it.
async fn lock_owners(
    pool: &SqlitePool,
) -> StoreResult<(sqlx::Transaction<'static, sqlx::Sqlite>, i64)> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let owners: i64 = sqlx::query_scalar(ENABLED_OWNERS)
        .fetch_one(&mut *tx)
        .await?;
    Ok((tx, owners))
}

/// Commits a user change unless it took away the last enabled owner (then rolls it back). A
/// database that had no owner to begin with (users made by `ddms user add` as admins only)
/// is left to its operator.
async fn keep_an_owner(
    mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    owners_before: i64,
) -> StoreResult<()> {
    let owners: i64 = sqlx::query_scalar(ENABLED_OWNERS)
        .fetch_one(&mut *tx)
        .await?;
    if owners_before > 0 && owners == 0 {
        tx.rollback().await?;
        return Err(StoreError::Conflict(LAST_OWNER.into()));
    }
    tx.commit().await?;
    Ok(())
}
