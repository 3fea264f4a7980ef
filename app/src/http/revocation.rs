//! Ending live streams whose credentials ended. A request is authenticated once, but an event
//! stream lives for hours: without this, a revoked token or a logged-out session would keep
//! receiving readings. Where the credential ends (revoke, logout, user disabled or deleted,
//! password change) the handler announces it and streams of this instance end at once; a
//! stream also re-checks its credential every `http.stream_recheck_interval`, which catches
//! what other instances (or expiry) ended.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::AppState;
use crate::store::StoreError;

/// Announcements buffered per listening stream; one that falls behind re-checks at once.
const BUFFER: usize = 256;

/// A credential that just ended.
#[derive(Debug, Clone)]
pub enum Ended {
    Token(Uuid),
    /// One session, by the SHA-256 of its cookie secret.
    Session(String),
    /// Every session of a user but `except` (the one that changed its own password).
    UserSessions {
        user_id: Uuid,
        except: Option<String>,
    },
}

#[derive(Clone)]
pub struct Revocations {
    announce: broadcast::Sender<Ended>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            announce: broadcast::channel(BUFFER).0,
        }
    }
}

impl Revocations {
    /// Streams of `ended` on this instance close now.
    pub fn announce(&self, ended: Ended) {
        // No receivers (no stream open) is not an error.
        let _ = self.announce.send(ended);
    }

    fn subscribe(&self) -> broadcast::Receiver<Ended> {
        self.announce.subscribe()
    }
}

/// What a stream was opened with.
#[derive(Debug, Clone)]
pub enum Credential {
    Token { id: Uuid, hash: String },
    Session { id_hash: String, user_id: Uuid },
}

impl Credential {
    fn ended_by(&self, ended: &Ended) -> bool {
        match (self, ended) {
            (Credential::Token { id, .. }, Ended::Token(revoked)) => id == revoked,
            (Credential::Session { id_hash, .. }, Ended::Session(ended)) => id_hash == ended,
            (
                Credential::Session { id_hash, user_id },
                Ended::UserSessions { user_id: u, except },
            ) => user_id == u && except.as_deref() != Some(id_hash.as_str()),
            _ => false,
        }
    }

    /// Whether the store still honours the credential. A store that cannot answer keeps the
    /// stream open: a database blip must not disconnect every dashboard.
    async fn still_valid(&self, state: &AppState) -> bool {
        let result = match self {
            Credential::Token { hash, .. } => {
                state.store.authenticate_api_token(hash).await.map(|_| true)
            }
            Credential::Session { id_hash, .. } => {
                state.store.find_session(id_hash).await.map(|record| {
                    // Idle expiry is left to the next request: the stream itself is activity
                    // a wall display relies on.
                    record.expires_at > Utc::now() && !record.user.is_disabled()
                })
            }
        };
        match result {
            Ok(valid) => valid,
            Err(StoreError::NotFound) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-check a stream's credentials; keeping it open");
                true
            }
        }
    }
}

/// Resolves once `credential` has ended: announced on this instance, or found ended by a
/// re-check every `every`.
pub async fn ended(state: AppState, credential: Credential, every: Duration) {
    let mut announcements = Some(state.security.revocations.subscribe());
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let announced = async {
            match announcements.as_mut() {
                Some(receiver) => receiver.recv().await,
                None => std::future::pending().await,
            }
        };
        let check_store = tokio::select! {
            announced = announced => match announced {
                Ok(ended) if credential.ended_by(&ended) => break,
                Ok(_) => false,
                // Missed announcements: ask the store instead.
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => {
                    announcements = None;
                    false
                }
            },
            _ = recheck.tick() => true,
        };
        if check_store && !credential.still_valid(&state).await {
            break;
        }
    }
    tracing::info!(
        auth.credential = credential.kind(),
        "live stream ended: its credentials ended"
    );
}

impl Credential {
    fn kind(&self) -> &'static str {
        match self {
            Credential::Token { .. } => "token",
            Credential::Session { .. } => "session",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_change_ends_every_session_of_the_user_but_its_own() {
        let user_id = Uuid::now_v7();
        let own = Credential::Session {
            id_hash: "own".into(),
            user_id,
        };
        let other = Credential::Session {
            id_hash: "other".into(),
            user_id,
        };
        let stranger = Credential::Session {
            id_hash: "stranger".into(),
            user_id: Uuid::now_v7(),
        };
        let ended = Ended::UserSessions {
            user_id,
            except: Some("own".into()),
        };
        assert!(!own.ended_by(&ended));
        assert!(other.ended_by(&ended));
        assert!(!stranger.ended_by(&ended));
        let token = Credential::Token {
            id: user_id,
            hash: "h".into(),
        };
        assert!(!token.ended_by(&ended), "a token is no session");
        assert!(token.ended_by(&Ended::Token(user_id)));
    }
}
