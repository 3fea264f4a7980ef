//! [`StatusStore`](crate::store::StatusStore) on PostgreSQL: the shared implementation
//! (`common::status`); nothing about the status board differs between the backends.

use super::PostgresStore;
use crate::store::common::status::status_store;

status_store!(PostgresStore);
