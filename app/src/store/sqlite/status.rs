//! [`StatusStore`](crate::store::StatusStore) on SQLite: the shared implementation
//! (`common::status`); nothing about the status board differs between the backends.

use super::SqliteStore;
use crate::store::common::status::status_store;

status_store!(SqliteStore);
