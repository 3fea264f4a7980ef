//! [`LeaseStore`](crate::store::LeaseStore) for both backends. Taking and giving up leases is
//! all the backend's own (`take_leases`, `give_up_leases`): PostgreSQL does it in one statement
//! of arrays, by the database's clock; SQLite row by row in one transaction, by the caller's.

/// Implements `LeaseStore` for `$store`. The backend provides
/// `async fn take_leases(&self, names: &[String], holder: &str, ttl: Duration)
/// -> StoreResult<Vec<String>>` and
/// `async fn give_up_leases(&self, names: &[String], holder: &str) -> StoreResult<()>`, both
/// for a non-empty list of names.
macro_rules! lease_store {
    ($store:ty) => {
        const _: () = {
            use std::time::Duration;

            use async_trait::async_trait;

            use $crate::store::common::unless_empty;
            use $crate::store::{LeaseStore, StoreResult};

            #[async_trait]
            impl LeaseStore for $store {
                async fn acquire_leases(
                    &self,
                    names: &[String],
                    holder: &str,
                    ttl: Duration,
                ) -> StoreResult<Vec<String>> {
                    unless_empty(names, self.take_leases(names, holder, ttl)).await
                }

                async fn release_leases(&self, names: &[String], holder: &str) -> StoreResult<()> {
                    unless_empty(names, self.give_up_leases(names, holder)).await
                }
            }
        };
    };
}
pub(in crate::store) use lease_store;
