//! [`Store`](crate::store::Store) itself (health and migrations) for both backends. What
//! differs is which pool answers health checks and how to ask whether the migrations table
//! exists (see `sql_store!`).

/// Implements `Store` for `$store` (the `Backend::$backend`), whose migrations are embedded from
/// `$migrations`. The backend provides `fn health_pool(&self) -> &Pool<_>`, the pool that
/// answers pings and migration checks, `fn writer(&self) -> &Pool<_>`, the pool that writes
/// (every domain's writing statements and transactions go to it), `async fn checkpoint_wal(&self)
/// -> StoreResult<()>` for [`Store::checkpoint`](crate::store::Store::checkpoint), and `const
/// MIGRATIONS_TABLE_EXISTS: &str`, a query that yields whether `_sqlx_migrations` exists, as a
/// boolean.
macro_rules! sql_store {
    ($store:ty, $backend:ident, $migrations:literal) => {
        const _: () = {
            use std::time::Duration;

            use async_trait::async_trait;
            use sqlx::migrate::Migrator;

            use $crate::store::{bounded, Backend, MigrationStatus, Store, StoreResult};

            static MIGRATOR: Migrator = sqlx::migrate!($migrations);

            /// A newer release may already have migrated further (expand-only): not an error for
            /// this one.
            fn lenient_migrator() -> Migrator {
                let mut migrator = sqlx::migrate!($migrations);
                migrator.set_ignore_missing(true);
                migrator
            }

            #[async_trait]
            impl Store for $store {
                fn backend(&self) -> Backend {
                    Backend::$backend
                }

                async fn ping(&self, timeout: Duration) -> StoreResult<()> {
                    bounded(timeout, sqlx::query("SELECT 1").execute(self.health_pool())).await
                }

                async fn checkpoint(&self) -> StoreResult<()> {
                    self.checkpoint_wal().await
                }

                async fn probe_migrations(&self) -> StoreResult<MigrationStatus> {
                    self.migrations.get_or_check(self.migration_status()).await
                }

                async fn migrate(&self) -> StoreResult<MigrationStatus> {
                    lenient_migrator().run(self.writer()).await?;
                    self.migration_status().await
                }

                async fn migration_status(&self) -> StoreResult<MigrationStatus> {
                    let exists: bool = sqlx::query_scalar(Self::MIGRATIONS_TABLE_EXISTS)
                        .fetch_one(self.health_pool())
                        .await?;
                    let applied = if exists {
                        sqlx::query_scalar(
                            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
                        )
                        .fetch_all(self.health_pool())
                        .await?
                    } else {
                        Vec::new()
                    };
                    Ok(MigrationStatus::compare(&MIGRATOR, applied))
                }
            }
        };
    };
}
pub(in crate::store) use sql_store;
