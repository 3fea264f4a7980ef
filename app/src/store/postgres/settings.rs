//! [`SettingsStore`](crate::store::SettingsStore) on PostgreSQL: the shared implementation
//! (`common::settings`); nothing about settings differs between the backends.

use super::PostgresStore;
use crate::store::common::settings::settings_store;

settings_store!(PostgresStore);
