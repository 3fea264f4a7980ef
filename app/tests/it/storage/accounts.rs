//! Conformance checks of accounts: users, sessions, API tokens (and their use, seen across
//! instances), settings and the audit log.

use super::*;

pub(super) async fn users_and_tokens_are_found_by_name_and_hash(store: Arc<dyn Store>) {
    assert_eq!(store.count_users().await.unwrap(), 0);
    let user = store
        .create_user(&NewUser {
            username: "ada".into(),
            password_hash: "$argon2id$x".into(),
            role: Role::Admin,
        })
        .await
        .unwrap();
    assert_eq!(store.find_user("ada").await.unwrap().id, user.id);
    assert_eq!(
        store.find_user("ada").await.unwrap().password_hash,
        "$argon2id$x"
    );
    assert!(matches!(
        store.find_user("bob").await,
        Err(StoreError::NotFound)
    ));
    let dup = store
        .create_user(&NewUser {
            username: "ada".into(),
            password_hash: "h".into(),
            role: Role::Viewer,
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))));
    assert_eq!(store.count_users().await.unwrap(), 1);

    let token = store
        .create_api_token(&NewApiToken {
            name: "ci".into(),
            token_hash: "abc".into(),
            role: Role::Viewer,
        })
        .await
        .unwrap();
    assert!(token.last_used_at.is_none());
    let found = store.authenticate_api_token("abc").await.unwrap();
    assert_eq!(found.id, token.id);
    assert_eq!(found.role, Role::Viewer);
    assert!(found.last_used_at.is_some(), "use is recorded");
    assert!(matches!(
        store.authenticate_api_token("abd").await,
        Err(StoreError::NotFound)
    ));
}

pub(super) async fn settings_and_audit_log_round_trip(store: Arc<dyn Store>) {
    assert_eq!(store.get_setting("retention_days").await.unwrap(), None);
    store
        .put_setting("retention_days", &json!(30))
        .await
        .unwrap();
    store
        .put_setting("retention_days", &json!({"days": 90}))
        .await
        .unwrap();
    assert_eq!(
        store.get_setting("retention_days").await.unwrap(),
        Some(json!({"days": 90}))
    );
    for action in ["user.create", "token.create"] {
        store
            .append_audit(&NewAuditEntry {
                actor: "cli".into(),
                action: action.into(),
                target: Some("x".into()),
                detail: json!({"role": "viewer"}),
                remote_addr: Some("192.0.2.1".into()),
            })
            .await
            .unwrap();
    }
    let entries = store.list_audit(10).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["token.create", "user.create"], "newest first");
    assert_eq!(entries[0].detail, json!({"role": "viewer"}));
}

pub(super) async fn users_are_listed_changed_disabled_and_deleted(store: Arc<dyn Store>) {
    let new = |name: &str, role| NewUser {
        username: name.into(),
        password_hash: format!("hash-of-{name}"),
        role,
    };
    let ada = store.create_user(&new("ada", Role::Owner)).await.unwrap();
    let bob = store.create_user(&new("bob", Role::Viewer)).await.unwrap();
    assert!(ada.disabled_at.is_none());
    let names: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["ada", "bob"]);
    assert_eq!(store.get_user(bob.id).await.unwrap().username, "bob");

    let promoted = store
        .update_user(
            bob.id,
            &UserChange {
                role: Some(Role::Admin),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(promoted.role, Role::Admin);
    assert_eq!(
        promoted.password_hash, "hash-of-bob",
        "unchanged fields stay"
    );
    let disabled = store
        .update_user(
            bob.id,
            &UserChange {
                disabled: Some(true),
                password_hash: Some("new".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(disabled.is_disabled());
    assert_eq!(disabled.password_hash, "new");
    assert_eq!(disabled.role, Role::Admin);
    assert!(store.find_user("bob").await.unwrap().is_disabled());
    // Disabling a disabled user again keeps the time it was first disabled.
    let again = store
        .update_user(
            bob.id,
            &UserChange {
                disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(again.disabled_at, disabled.disabled_at);
    let enabled = store
        .update_user(
            bob.id,
            &UserChange {
                disabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!enabled.is_disabled());
    assert!(matches!(
        store
            .update_user(uuid::Uuid::now_v7(), &UserChange::default())
            .await,
        Err(StoreError::NotFound)
    ));
    store.delete_user(bob.id).await.unwrap();
    assert!(matches!(
        store.get_user(bob.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_user(bob.id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.count_users().await.unwrap(), 1);
}

pub(super) async fn sessions_are_found_by_hash_touched_pruned_and_end_with_their_user(
    store: Arc<dyn Store>,
) {
    let user = store
        .create_user(&NewUser {
            username: "ada".into(),
            password_hash: "h".into(),
            role: Role::Admin,
        })
        .await
        .unwrap();
    let session = |id: &str, created: DateTime<Utc>, expires: DateTime<Utc>| NewSession {
        id_hash: id.into(),
        user_id: user.id,
        csrf_hash: format!("csrf-{id}"),
        created_at: created,
        expires_at: expires,
        remote_addr: Some("192.0.2.1".into()),
    };
    let now = Utc::now();
    let hour = chrono::Duration::hours(1);
    store
        .create_session(&session("live", now, now + hour))
        .await
        .unwrap();
    store
        .create_session(&session("idle", now - hour, now + hour))
        .await
        .unwrap();
    store
        .create_session(&session(
            "over",
            now - hour,
            now - chrono::Duration::seconds(1),
        ))
        .await
        .unwrap();
    let found = store.find_session("live").await.unwrap();
    assert_eq!(found.user.id, user.id);
    assert_eq!(found.user.role, Role::Admin);
    assert_eq!(found.csrf_hash, "csrf-live");
    assert!((found.last_seen_at - now).num_milliseconds().abs() < 1000);
    assert!((found.expires_at - (now + hour)).num_milliseconds().abs() < 1000);
    assert!(matches!(
        store.find_session("nope").await,
        Err(StoreError::NotFound)
    ));
    // A role change shows in the session at once (it is read with the user).
    store
        .update_user(
            user.id,
            &UserChange {
                role: Some(Role::Viewer),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.find_session("live").await.unwrap().user.role,
        Role::Viewer
    );
    let later = now + chrono::Duration::seconds(5);
    store.touch_session("live", later).await.unwrap();
    let touched = store.find_session("live").await.unwrap().last_seen_at;
    assert!((touched - later).num_milliseconds().abs() < 1000);
    // Pruning: past its absolute end ("over") or idle since before the cut ("idle").
    let pruned = store
        .prune_sessions(Utc::now(), now - chrono::Duration::minutes(30))
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    assert!(store.find_session("live").await.is_ok());
    assert!(store.delete_session("live").await.unwrap());
    assert!(!store.delete_session("live").await.unwrap());
    store
        .create_session(&session("a", now, now + hour))
        .await
        .unwrap();
    store
        .create_session(&session("b", now, now + hour))
        .await
        .unwrap();
    assert_eq!(store.delete_user_sessions(user.id).await.unwrap(), 2);
    store
        .create_session(&session("c", now, now + hour))
        .await
        .unwrap();
    store.delete_user(user.id).await.unwrap();
    assert!(
        matches!(store.find_session("c").await, Err(StoreError::NotFound)),
        "sessions go with their user"
    );
}

pub(super) async fn tokens_are_listed_and_revoked(store: Arc<dyn Store>) {
    let token = store
        .create_api_token(&NewApiToken {
            name: "ci".into(),
            token_hash: "abc".into(),
            role: Role::Admin,
        })
        .await
        .unwrap();
    assert!(token.revoked_at.is_none());
    let listed = store.list_api_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "ci");
    // A lookup first, so the in-process lookup cache holds the token: revoking must drop it.
    assert_eq!(
        store.authenticate_api_token("abc").await.unwrap().id,
        token.id
    );
    let revoked = store.revoke_api_token(token.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(matches!(
        store.authenticate_api_token("abc").await,
        Err(StoreError::NotFound)
    ));
    assert!(
        matches!(
            store.revoke_api_token(token.id).await,
            Err(StoreError::NotFound)
        ),
        "once"
    );
    assert!(
        store.list_api_tokens().await.unwrap()[0]
            .revoked_at
            .is_some(),
        "kept for the record"
    );
}

pub(super) async fn the_audit_log_pages_newest_first(store: Arc<dyn Store>) {
    for i in 0..5 {
        store
            .append_audit(&NewAuditEntry {
                actor: "user:ada".into(),
                action: format!("a{i}"),
                target: None,
                detail: json!({ "i": i }),
                remote_addr: None,
            })
            .await
            .unwrap();
    }
    let first = store.list_audit_before(None, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["a4", "a3"]
    );
    let next = store.list_audit_before(Some(first[1].id), 2).await.unwrap();
    assert_eq!(
        next.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["a2", "a1"]
    );
}

/// Runs one statement on its own connection, as another process would.
pub(super) async fn execute_elsewhere(url: &str, sql: &str) {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
}

/// Two instances on one database, as blue and green are: a token's use is written once per
/// resolution, not per request, and a revocation made elsewhere is seen within the cache TTL.
pub(super) async fn token_use_is_recorded_coarsely_and_revocation_is_seen_within_the_cache_ttl(
    db: Db,
) {
    let (url, _dir) = database_url(&db).await;
    let url: secrecy::SecretString = url.into();
    let blue = store::connect(&url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    blue.migrate().await.unwrap();
    let green = store::connect(&url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    blue.create_api_token(&NewApiToken {
        name: "ci".into(),
        token_hash: "abc".into(),
        role: Role::Admin,
    })
    .await
    .unwrap();
    let first = blue.authenticate_api_token("abc").await.unwrap();
    assert!(first.last_used_at.is_some(), "the first use is recorded");
    // The other instance has no cached lookup: it reads the row, and finds the use recent
    // enough not to write it again.
    let seen = green.authenticate_api_token("abc").await.unwrap();
    assert_eq!(seen.last_used_at, first.last_used_at);

    execute_elsewhere(
        url.expose_secret(),
        "UPDATE api_tokens SET revoked_at = created_at WHERE token_hash = 'abc'",
    )
    .await;
    let fresh = store::connect(&url, 2, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(
        fresh.authenticate_api_token("abc").await,
        Err(StoreError::NotFound)
    ));
    // Seen everywhere within the cache's TTL (a margin added for a busy machine).
    eventually(
        "the revocation seen by both instances",
        store::TOKEN_CACHE_TTL + Duration::from_secs(5),
        || async {
            for instance in [&blue, &green] {
                if !matches!(
                    instance.authenticate_api_token("abc").await,
                    Err(StoreError::NotFound)
                ) {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

#[tokio::test]
async fn sqlite_token_use_is_recorded_coarsely_and_revocation_is_seen_within_the_cache_ttl() {
    token_use_is_recorded_coarsely_and_revocation_is_seen_within_the_cache_ttl(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_token_use_is_recorded_coarsely_and_revocation_is_seen_within_the_cache_ttl() {
    token_use_is_recorded_coarsely_and_revocation_is_seen_within_the_cache_ttl(Db::Postgres(
        Provider::Local,
    ))
    .await;
}
