//! [`DeviceStore`](crate::store::DeviceStore) on PostgreSQL: the shared implementation
//! (`common::devices`); nothing about devices differs between the backends.

use super::PostgresStore;
use crate::store::common::devices::device_store;

device_store!(PostgresStore);
