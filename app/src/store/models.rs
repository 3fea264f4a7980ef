//! Records the store reads and writes; shared by both backends and the HTTP layer. A record
//! read from a table decodes from its row itself (`sqlx::FromRow`; the per-backend column types
//! it names are in `common`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::common::{Id, Micros, Nullable};

pub type SeriesId = i64;

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Group {
    #[sqlx(try_from = "Id")]
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Modbus,
    Mqtt,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Modbus => "modbus",
            Protocol::Mqtt => "mqtt",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "modbus" => Ok(Protocol::Modbus),
            "mqtt" => Ok(Protocol::Mqtt),
            other => Err(format!("unknown protocol `{other}`")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewDevice {
    pub name: String,
    pub protocol: Protocol,
    pub group_id: Option<Uuid>,
    /// Protocol settings (for Modbus: host, port, unit id, register map) as JSON.
    pub config: serde_json::Value,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Device {
    #[sqlx(try_from = "Id")]
    pub id: Uuid,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub protocol: Protocol,
    #[sqlx(try_from = "Nullable<Id>")]
    pub group_id: Option<Uuid>,
    pub config: serde_json::Value,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What changes when a device is added, edited, enabled, disabled or deleted, without its name
/// and configuration: the tasks that follow the device list compare these to find what changed
/// and read only those devices whole. A few dozen bytes a device, where a whole device with its
/// configuration as parsed JSON is kilobytes — at 10,000 devices a full listing on every change
/// made adding devices one by one quadratic in time and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceVersion {
    #[sqlx(try_from = "Id")]
    pub id: Uuid,
    #[sqlx(try_from = "String")]
    pub protocol: Protocol,
    pub enabled: bool,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub series: SeriesId,
    pub ts: DateTime<Utc>,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, sqlx::FromRow)]
pub struct Point {
    #[sqlx(try_from = "Micros")]
    pub ts: DateTime<Utc>,
    pub value: f64,
}

/// What one retention run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneCounts {
    /// Raw readings deleted row by row.
    pub readings: u64,
    /// Whole daily partitions dropped (PostgreSQL); their rows are not counted one by one.
    pub partitions: u64,
    pub rollups_1m: u64,
    pub rollups_1h: u64,
}

/// Width of a rollup bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollupStep {
    Minute,
    Hour,
}

impl RollupStep {
    pub fn micros(self) -> i64 {
        match self {
            RollupStep::Minute => 60_000_000,
            RollupStep::Hour => 3_600_000_000,
        }
    }

    /// The start of the bucket holding `ts`.
    pub fn bucket(self, ts: DateTime<Utc>) -> DateTime<Utc> {
        let us = ts.timestamp_micros();
        let start = us - us.rem_euclid(self.micros());
        DateTime::from_timestamp_micros(start).unwrap_or(ts)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RollupStep::Minute => "1m",
            RollupStep::Hour => "1h",
        }
    }
}

/// One rollup bucket: the readings of a series with `ts <= reading < ts + step`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    /// Start of the bucket.
    pub ts: DateTime<Utc>,
    /// The average, so a client that plots `value` works for raw and rollup steps alike.
    pub value: f64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub count: u64,
}

impl Bucket {
    pub fn from_sums(ts: DateTime<Utc>, min: f64, max: f64, sum: f64, count: i64) -> Self {
        let count = count.max(0) as u64;
        let avg = if count == 0 { 0.0 } else { sum / count as f64 };
        Bucket {
            ts,
            value: avg,
            min,
            max,
            avg,
            count,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct LatestReading {
    #[sqlx(rename = "id")]
    pub series: SeriesId,
    pub metric: String,
    pub unit: Option<String>,
    #[sqlx(try_from = "Micros")]
    pub ts: DateTime<Utc>,
    pub value: f64,
}

/// Roles in decreasing power; a role may do everything the roles after it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role carries at least the powers of `required`.
    pub fn allows(self, required: Role) -> bool {
        self <= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "unknown role `{other}`; expected owner, admin or viewer"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub password_hash: String,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct User {
    #[sqlx(try_from = "Id")]
    pub id: Uuid,
    pub username: String,
    #[serde(skip)]
    pub password_hash: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Set when an owner disabled the user: no login, no session.
    pub disabled_at: Option<DateTime<Utc>>,
}

impl User {
    pub fn is_disabled(&self) -> bool {
        self.disabled_at.is_some()
    }
}

/// What an owner may change about a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub role: Option<Role>,
    /// `Some(true)` disables, `Some(false)` enables again.
    pub disabled: Option<bool>,
    pub password_hash: Option<String>,
}

/// A login session as stored: only hashes of the cookie's secret and of the CSRF token.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id_hash: String,
    pub user_id: Uuid,
    pub csrf_hash: String,
    pub created_at: DateTime<Utc>,
    /// The absolute end of the session, however active it is.
    pub expires_at: DateTime<Utc>,
    pub remote_addr: Option<String>,
}

/// A stored session with its user as it is now (role changes apply at once). Read from the
/// session joined with its user, whose `created_at` keeps its name (the session's is
/// `s_created_at`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRecord {
    pub id_hash: String,
    #[sqlx(flatten)]
    pub user: User,
    #[sqlx(rename = "csrf_token")]
    pub csrf_hash: String,
    #[sqlx(rename = "s_created_at")]
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewApiToken {
    pub name: String,
    pub token_hash: String,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApiToken {
    #[sqlx(try_from = "Id")]
    pub id: Uuid,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: serde_json::Value,
    pub remote_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: serde_json::Value,
    pub remote_addr: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewNotification {
    pub kind: String,
    pub device_id: Option<Uuid>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Notification {
    #[sqlx(try_from = "Id")]
    pub id: Uuid,
    pub kind: String,
    #[sqlx(try_from = "Nullable<Id>")]
    pub device_id: Option<Uuid>,
    pub message: String,
    pub created_at: DateTime<Utc>,
    pub cleared_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Unknown,
    Online,
    Offline,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Online => "online",
            Status::Offline => "offline",
            Status::Error => "error",
        }
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unknown" => Ok(Status::Unknown),
            "online" => Ok(Status::Online),
            "offline" => Ok(Status::Offline),
            "error" => Ok(Status::Error),
            other => Err(format!("unknown device status `{other}`")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceStatus {
    pub device_id: Uuid,
    pub status: Status,
    pub last_error: Option<String>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MqttCredentials {
    #[sqlx(try_from = "Id")]
    pub device_id: Uuid,
    pub username: String,
    pub secret_hash: String,
}

/// An event for the live stream, before the log gave it an id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: String,
    pub data: serde_json::Value,
}

/// An event as the log holds it: ids increase in commit order, across instances.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredEvent {
    pub id: i64,
    pub kind: String,
    pub data: serde_json::Value,
}
