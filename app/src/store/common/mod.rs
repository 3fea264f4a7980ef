//! What the two SQL backends share: one SQL text (numbered `$N` parameters, which sqlx's SQLite
//! driver binds as PostgreSQL does), and the values the two store differently, encoded per
//! backend so that the code around them and the records that decode from rows are written once:
//!
//! - [`Id`]: a UUID, native `uuid` on PostgreSQL and hyphenated TEXT on SQLite.
//! - [`Micros`]: a timestamp, `timestamptz` on PostgreSQL and integer microseconds since the
//!   epoch on SQLite (readings, rollups, events, leases, alerting).
//! - Other timestamps are `DateTime<Utc>` as sqlx encodes it: `timestamptz`, or RFC 3339 text on
//!   SQLite (always written by the same encoder, so it compares as text), bound from Rust on both
//!   backends.
//! - JSON is `serde_json::Value`: `jsonb` on PostgreSQL, JSON text on SQLite.
//!
//! The records decode from rows themselves (`#[derive(sqlx::FromRow)]` in `models.rs` and
//! `alerts/mod.rs`): a field stored as one of these types names it with
//! `#[sqlx(try_from = "Id")]`, `"Micros"`, or [`Nullable`] of either for an `Option` field, and
//! an enum stored as text with `try_from = "String"` (a value that does not parse is
//! [`StoreError::Corrupt`](crate::store::StoreError::Corrupt), like any column that does not
//! decode). A row struct remains only where a record is computed from its row.
//!
//! Each domain file here holds a `macro_rules!` that implements its sub-trait for a store type;
//! `sqlite/` and `postgres/` expand it and keep only what genuinely differs between the
//! databases (COPY/UNNEST, partitions, advisory locks, how a transaction takes its locks), as
//! inherent methods the shared code calls.

pub(super) mod accounts;
pub(super) mod devices;
pub(super) mod events;
pub(super) mod health;
pub(super) mod leases;
pub(super) mod readings;
pub(super) mod settings;
pub(super) mod snapshots;
pub(super) mod status;

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Database, Decode, Encode, Postgres, Sqlite, Type};
use uuid::fmt::Hyphenated;
use uuid::Uuid;

use super::alerts::{AlertState, DeliveryState};
use super::{Protocol, Role, StoreResult};

/// A UUID column: native `uuid` on PostgreSQL, hyphenated TEXT on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Id(pub Uuid);

impl From<Id> for Uuid {
    fn from(id: Id) -> Uuid {
        id.0
    }
}

impl Type<Postgres> for Id {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Id {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Uuid as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Decode<'_, Postgres> for Id {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        <Uuid as Decode<Postgres>>::decode(value).map(Id)
    }
}

impl Type<Sqlite> for Id {
    fn type_info() -> SqliteTypeInfo {
        <Hyphenated as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Id {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <Hyphenated as Encode<Sqlite>>::encode(self.0.hyphenated(), buf)
    }
}

impl Decode<'_, Sqlite> for Id {
    fn decode(value: SqliteValueRef<'_>) -> Result<Self, BoxDynError> {
        <Hyphenated as Decode<Sqlite>>::decode(value).map(|id| Id(id.into_uuid()))
    }
}

/// A timestamp column that SQLite keeps as integer microseconds since the epoch (compact,
/// compared as numbers); `timestamptz` on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Micros(pub DateTime<Utc>);

impl From<Micros> for DateTime<Utc> {
    fn from(ts: Micros) -> DateTime<Utc> {
        ts.0
    }
}

impl Type<Postgres> for Micros {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Micros {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Decode<'_, Postgres> for Micros {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<Postgres>>::decode(value).map(Micros)
    }
}

impl Type<Sqlite> for Micros {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for Micros {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode(self.0.timestamp_micros(), buf)
    }
}

impl Decode<'_, Sqlite> for Micros {
    fn decode(value: SqliteValueRef<'_>) -> Result<Self, BoxDynError> {
        let us = <i64 as Decode<Sqlite>>::decode(value)?;
        DateTime::from_timestamp_micros(us)
            .map(Micros)
            .ok_or_else(|| format!("timestamp {us} out of range").into())
    }
}

/// A nullable column of `T`, decoded like `Option<T>`. sqlx's `#[sqlx(try_from = …)]` converts a
/// column into a field with `TryFrom`, and neither `Option<Uuid>` nor `Option<Id>` is ours to
/// give that conversion: `Nullable<Id>` and `Nullable<Micros>` are.
pub(crate) struct Nullable<T>(pub Option<T>);

impl<DB: Database, T: Type<DB>> Type<DB> for Nullable<T> {
    fn type_info() -> DB::TypeInfo {
        <Option<T> as Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <Option<T> as Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: Database, T: Decode<'r, DB>> Decode<'r, DB> for Nullable<T> {
    fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        <Option<T> as Decode<'r, DB>>::decode(value).map(Nullable)
    }
}

impl From<Nullable<Id>> for Option<Uuid> {
    fn from(id: Nullable<Id>) -> Option<Uuid> {
        id.0.map(Uuid::from)
    }
}

impl From<Nullable<Micros>> for Option<DateTime<Utc>> {
    fn from(ts: Nullable<Micros>) -> Option<DateTime<Utc>> {
        ts.0.map(DateTime::from)
    }
}

/// Lets each enum stored as text decode with `#[sqlx(try_from = "String")]`, through its
/// parser.
macro_rules! parsed_from_text {
    ($($enum:ty => $parse:expr),+ $(,)?) => {$(
        impl TryFrom<String> for $enum {
            type Error = BoxDynError;
            fn try_from(text: String) -> Result<Self, BoxDynError> {
                Ok($parse(&text)?)
            }
        }
    )+};
}

parsed_from_text!(
    Protocol => str::parse,
    Role => str::parse,
    AlertState => AlertState::parse,
    DeliveryState => DeliveryState::parse,
);

/// What a call with an empty list of work gives (`Default`: nothing), without a round trip to
/// the database; else what `query`, the backend's statement for the list, gives.
pub(crate) async fn unless_empty<T, R: Default>(
    list: &[T],
    query: impl std::future::Future<Output = StoreResult<R>>,
) -> StoreResult<R> {
    if list.is_empty() {
        return Ok(R::default());
    }
    query.await
}

/// `Some(Micros)` of an optional timestamp, for binding.
pub(crate) fn opt_micros(ts: Option<DateTime<Utc>>) -> Option<Micros> {
    ts.map(Micros)
}

/// `Some(Id)` of an optional UUID, for binding.
pub(crate) fn opt_id(id: Option<Uuid>) -> Option<Id> {
    id.map(Id)
}
