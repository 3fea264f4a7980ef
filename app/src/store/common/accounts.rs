//! [`AccountStore`](crate::store::AccountStore) for both backends: users, sessions, API tokens
//! and the audit log. What differs is how a user change locks out a concurrent one (the
//! backend's `lock_owners`, see `account_store!`).

pub(in crate::store) const USER_COLUMNS: &str =
    "id, username, password_hash, role, created_at, disabled_at";
pub(in crate::store) const TOKEN_COLUMNS: &str =
    "id, name, role, created_at, last_used_at, revoked_at";

/// Implements `AccountStore` for `$store` (whose pool is of `$db`). The backend provides
/// `async fn lock_owners(&self) -> StoreResult<(Transaction<'static, $db>, i64)>`: a
/// transaction in which no other user change can come between its owner counts, and the
/// number of enabled owners before the change.
macro_rules! account_store {
    ($store:ty, $db:ty) => {
        const _: () = {
            use std::time::Instant;

            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use uuid::Uuid;

            use $crate::store::common::accounts::{TOKEN_COLUMNS, USER_COLUMNS};
            use $crate::store::common::Id;
            use $crate::store::{
                token_cache, AccountStore, ApiToken, AuditEntry, NewApiToken, NewAuditEntry,
                NewSession, NewUser, Role, SessionRecord, StoreError, StoreResult, User,
                UserChange, ENABLED_OWNERS, LAST_OWNER,
            };

            /// Commits a user change unless it took away the last enabled owner (then rolls it
            /// back). A database that had no owner to begin with (users made by `ddms user add`
            /// as admins only) is left to its operator.
            async fn keep_an_owner(
                mut tx: sqlx::Transaction<'_, $db>,
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

            #[async_trait]
            impl AccountStore for $store {
                async fn create_user(&self, user: &NewUser) -> StoreResult<User> {
                    Ok(sqlx::query_as(&format!(
                        "INSERT INTO users (id, username, password_hash, role, created_at) \
                         VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
                    ))
                    .bind(Id(Uuid::now_v7()))
                    .bind(&user.username)
                    .bind(&user.password_hash)
                    .bind(user.role.as_str())
                    .bind(Utc::now())
                    .fetch_one(self.writer())
                    .await?)
                }

                async fn find_user(&self, username: &str) -> StoreResult<User> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
                    ))
                    .bind(username)
                    .fetch_one(&self.pool)
                    .await?)
                }

                async fn count_users(&self) -> StoreResult<u64> {
                    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
                        .fetch_one(&self.pool)
                        .await?;
                    Ok(n as u64)
                }

                async fn get_user(&self, id: Uuid) -> StoreResult<User> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
                    ))
                    .bind(Id(id))
                    .fetch_one(&self.pool)
                    .await?)
                }

                async fn list_users(&self) -> StoreResult<Vec<User>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {USER_COLUMNS} FROM users ORDER BY username"
                    ))
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn update_user(&self, id: Uuid, change: &UserChange) -> StoreResult<User> {
                    let (mut tx, owners_before) = self.lock_owners().await?;
                    // Disabling keeps the time a user was first disabled; enabling clears it.
                    let user: User = sqlx::query_as(&format!(
                        "UPDATE users SET role = coalesce($1, role), \
                         password_hash = coalesce($2, password_hash), \
                         disabled_at = CASE WHEN $3 IS NULL THEN disabled_at \
                                            WHEN $3 THEN coalesce(disabled_at, $4) ELSE NULL END \
                         WHERE id = $5 RETURNING {USER_COLUMNS}"
                    ))
                    .bind(change.role.map(Role::as_str))
                    .bind(change.password_hash.as_deref())
                    .bind(change.disabled)
                    .bind(Utc::now())
                    .bind(Id(id))
                    .fetch_one(&mut *tx)
                    .await?;
                    keep_an_owner(tx, owners_before).await?;
                    Ok(user)
                }

                async fn delete_user(&self, id: Uuid) -> StoreResult<()> {
                    let (mut tx, owners_before) = self.lock_owners().await?;
                    let done = sqlx::query("DELETE FROM users WHERE id = $1")
                        .bind(Id(id))
                        .execute(&mut *tx)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    keep_an_owner(tx, owners_before).await
                }

                async fn create_session(&self, session: &NewSession) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, \
                         last_seen_at, expires_at, remote_addr) \
                         VALUES ($1, $2, $3, $4, $4, $5, $6)",
                    )
                    .bind(&session.id_hash)
                    .bind(Id(session.user_id))
                    .bind(&session.csrf_hash)
                    .bind(session.created_at)
                    .bind(session.expires_at)
                    .bind(&session.remote_addr)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn find_session(&self, id_hash: &str) -> StoreResult<SessionRecord> {
                    Ok(sqlx::query_as(
                        "SELECT s.id_hash, s.csrf_token, s.created_at AS s_created_at, \
                         s.last_seen_at, s.expires_at, u.id, u.username, u.password_hash, \
                         u.role, u.created_at, u.disabled_at \
                         FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1",
                    )
                    .bind(id_hash)
                    .fetch_one(&self.pool)
                    .await?)
                }

                async fn touch_session(&self, id_hash: &str, at: DateTime<Utc>) -> StoreResult<()> {
                    sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
                        .bind(at)
                        .bind(id_hash)
                        .execute(self.writer())
                        .await?;
                    Ok(())
                }

                async fn delete_session(&self, id_hash: &str) -> StoreResult<bool> {
                    let done = sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                        .bind(id_hash)
                        .execute(self.writer())
                        .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64> {
                    let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                        .bind(Id(user_id))
                        .execute(self.writer())
                        .await?;
                    Ok(done.rows_affected())
                }

                async fn delete_other_sessions(
                    &self,
                    user_id: Uuid,
                    keep: &str,
                ) -> StoreResult<u64> {
                    let done =
                        sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id_hash <> $2")
                            .bind(Id(user_id))
                            .bind(keep)
                            .execute(self.writer())
                            .await?;
                    Ok(done.rows_affected())
                }

                async fn prune_sessions(
                    &self,
                    now: DateTime<Utc>,
                    idle_before: DateTime<Utc>,
                ) -> StoreResult<u64> {
                    // On SQLite, timestamps are RFC 3339 text written by one encoder: they
                    // compare as text.
                    let done = sqlx::query(
                        "DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at < $2",
                    )
                    .bind(now)
                    .bind(idle_before)
                    .execute(self.writer())
                    .await?;
                    Ok(done.rows_affected())
                }

                async fn create_api_token(&self, token: &NewApiToken) -> StoreResult<ApiToken> {
                    Ok(sqlx::query_as(&format!(
                        "INSERT INTO api_tokens (id, name, token_hash, role, created_at) \
                         VALUES ($1, $2, $3, $4, $5) RETURNING {TOKEN_COLUMNS}"
                    ))
                    .bind(Id(Uuid::now_v7()))
                    .bind(&token.name)
                    .bind(&token.token_hash)
                    .bind(token.role.as_str())
                    .bind(Utc::now())
                    .fetch_one(self.writer())
                    .await?)
                }

                async fn authenticate_api_token(&self, token_hash: &str) -> StoreResult<ApiToken> {
                    if let Some(token) = self.tokens.get(token_hash, Instant::now()) {
                        return Ok(token);
                    }
                    let mut token: ApiToken = sqlx::query_as(&format!(
                        "SELECT {TOKEN_COLUMNS} FROM api_tokens \
                         WHERE token_hash = $1 AND revoked_at IS NULL"
                    ))
                    .bind(token_hash)
                    .fetch_one(&self.pool)
                    .await?;
                    let now = Utc::now();
                    if token_cache::last_use_is_stale(token.last_used_at, now) {
                        token.last_used_at = sqlx::query_scalar(
                            "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 \
                             RETURNING last_used_at",
                        )
                        .bind(now)
                        .bind(Id(token.id))
                        .fetch_optional(self.writer())
                        .await?
                        .or(token.last_used_at);
                    }
                    self.tokens.put(token_hash, token.clone(), Instant::now());
                    Ok(token)
                }

                async fn list_api_tokens(&self) -> StoreResult<Vec<ApiToken>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC"
                    ))
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn revoke_api_token(&self, id: Uuid) -> StoreResult<ApiToken> {
                    let token: ApiToken = sqlx::query_as(&format!(
                        "UPDATE api_tokens SET revoked_at = $1 \
                         WHERE id = $2 AND revoked_at IS NULL RETURNING {TOKEN_COLUMNS}"
                    ))
                    .bind(Utc::now())
                    .bind(Id(id))
                    .fetch_one(self.writer())
                    .await?;
                    // This instance refuses the token at once; others within the cache's TTL.
                    self.tokens.forget(id);
                    Ok(token)
                }

                async fn append_audit(&self, entry: &NewAuditEntry) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO audit_log (at, actor, action, target, detail, remote_addr) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(Utc::now())
                    .bind(&entry.actor)
                    .bind(&entry.action)
                    .bind(&entry.target)
                    .bind(&entry.detail)
                    .bind(&entry.remote_addr)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn list_audit_before(
                    &self,
                    before: Option<i64>,
                    limit: u32,
                ) -> StoreResult<Vec<AuditEntry>> {
                    Ok(sqlx::query_as(
                        "SELECT id, at, actor, action, target, detail, remote_addr \
                         FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
                    )
                    .bind(before.unwrap_or(i64::MAX))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?)
                }
            }
        };
    };
}
pub(in crate::store) use account_store;
