//! [`DeviceStore`](crate::store::DeviceStore) on SQLite: the shared implementation
//! (`common::devices`); nothing about devices differs between the backends.

use super::SqliteStore;
use crate::store::common::devices::device_store;

device_store!(SqliteStore);
