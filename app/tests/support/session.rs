//! Dashboard logins for the tests: users made in the store with one known password, logged in
//! through `POST /api/auth/login` as a browser would, and requests that carry the session's
//! cookies and CSRF header.

use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::{json, Value};

use super::app::TestApp;

/// Every test user's password.
pub const PASSWORD: &str = "correct horse battery staple";

/// The cookies a login set, and what the browser would send back.
#[derive(Debug, Clone)]
pub struct Session {
    pub secret: String,
    pub csrf: String,
    pub set_cookies: Vec<String>,
}

impl Session {
    /// The `Cookie` header a browser sends with this session.
    pub fn cookie_header(&self) -> String {
        format!("ddms_session={}; ddms_csrf={}", self.secret, self.csrf)
    }

    /// The whole `Set-Cookie` line of cookie `name`.
    pub fn set_cookie(&self, name: &str) -> &str {
        self.set_cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no Set-Cookie for {name}: {:?}", self.set_cookies))
    }
}

impl TestApp {
    /// A user created directly in the store, with [`PASSWORD`] (the CLI path has its own test).
    pub async fn add_user(&self, username: &str, role: ddms::store::Role) {
        self.store
            .create_user(&ddms::store::NewUser {
                username: username.into(),
                password_hash: ddms::auth::hash_password(PASSWORD).unwrap(),
                role,
            })
            .await
            .expect("create user");
    }

    /// `POST /api/auth/login` with these credentials, as it answers.
    pub async fn try_login(&self, username: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap()
    }

    /// Logs `username` in with [`PASSWORD`]; the login must succeed.
    pub async fn login(&self, username: &str) -> Session {
        let response = self.try_login(username, PASSWORD).await;
        assert_eq!(response.status(), 200, "login of {username}");
        let cookies = set_cookies(response.headers());
        let body: Value = response.json().await.unwrap();
        let session = Session {
            secret: cookie_value(&cookies, "ddms_session").expect("session cookie"),
            csrf: cookie_value(&cookies, "ddms_csrf").expect("csrf cookie"),
            set_cookies: cookies,
        };
        assert_eq!(body["csrf_token"], session.csrf.as_str());
        assert_eq!(body["username"], username);
        session
    }
}

/// A request carrying the session's cookies; with `csrf`, also its CSRF header.
pub fn with_session(
    request: reqwest::RequestBuilder,
    session: &Session,
    csrf: bool,
) -> reqwest::RequestBuilder {
    let request = request.header("cookie", session.cookie_header());
    if csrf {
        request.header("x-csrf-token", &session.csrf)
    } else {
        request
    }
}

/// Every `Set-Cookie` line of a response.
pub fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The value cookie `name` was set to, if it was.
pub fn cookie_value(set_cookies: &[String], name: &str) -> Option<String> {
    set_cookies.iter().find_map(|c| {
        c.split(';')
            .next()
            .and_then(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    })
}
