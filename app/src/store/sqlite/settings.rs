//! [`SettingsStore`](crate::store::SettingsStore) on SQLite: the shared implementation
//! (`common::settings`); nothing about settings differs between the backends.

use super::SqliteStore;
use crate::store::common::settings::settings_store;

settings_store!(SqliteStore);
