//! The HTTP side shared by webhook, Discord and Slack: the clients (timeouts, no redirects, no
//! proxies, the guarded resolver), URL checks, sending, and turning an answer into an
//! [`Outcome`].

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use url::{Host, Url};

use super::target::{check_ip, GuardedResolver, ResolveError};
use super::{field_error, FieldError, Outcome};

/// Response bodies are read up to this many bytes (only a snippet is ever used).
pub const RESPONSE_BODY_LIMIT: usize = 64 * 1024;
/// Longest accepted channel URL.
pub const URL_MAX: usize = 2048;
/// A receiver's Retry-After is honoured up to this long.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
/// Characters of a refusing receiver's body quoted in the reason.
const REASON_BODY_MAX: usize = 200;

/// Two clients: one whose resolver refuses private addresses, one for channels allowed to
/// reach them (it still refuses the never-allowed ones).
pub struct Clients {
    guarded: Result<reqwest::Client, String>,
    open: Result<reqwest::Client, String>,
}

impl Clients {
    pub fn new(timeout: Duration) -> Clients {
        Clients {
            guarded: build(timeout, false),
            open: build(timeout, true),
        }
    }

    fn get(&self, allow_private: bool) -> Result<&reqwest::Client, Outcome> {
        let client = if allow_private {
            &self.open
        } else {
            &self.guarded
        };
        client
            .as_ref()
            .map_err(|e| Outcome::retry(format!("HTTP client unavailable: {e}")))
    }
}

fn build(timeout: Duration, allow_private: bool) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        // A redirect could lead anywhere, past the checks made on the configured URL.
        .redirect(reqwest::redirect::Policy::none())
        // Through a proxy, the resolver would check the proxy's address, not the target's.
        .no_proxy()
        .user_agent(format!("ddms/{}", crate::VERSION))
        .dns_resolver(GuardedResolver::shared(allow_private))
        .build()
        .map_err(|e| error_chain(&e))
}

/// Checks a channel URL: length, https (http only when private targets are allowed), a host,
/// no credentials, and literal IPs through the SSRF guard.
pub fn validate_url(
    field: &str,
    url: &str,
    allow_private: bool,
    errors: &mut Vec<FieldError>,
) -> Option<Url> {
    let mut fail = |message: String| {
        errors.push(field_error(field, message));
        None
    };
    if url.len() > URL_MAX {
        return fail(format!("longer than {URL_MAX} characters"));
    }
    let parsed = match Url::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => return fail(format!("not a URL: {e}")),
    };
    match parsed.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => {
            return fail(
                "must be https:// (http:// only for channels allowed to reach private targets)"
                    .into(),
            )
        }
        other => return fail(format!("unsupported scheme `{other}`; expected https://")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return fail("may not contain a user name or password".into());
    }
    match parsed.host() {
        None => return fail("has no host".into()),
        Some(Host::Ipv4(ip)) => {
            if let Err(e) = check_ip(ip.into(), allow_private) {
                return fail(e.to_string());
            }
        }
        Some(Host::Ipv6(ip)) => {
            if let Err(e) = check_ip(ip.into(), allow_private) {
                return fail(e.to_string());
            }
        }
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !allow_private && (name == "localhost" || name.ends_with(".localhost")) {
                return fail(format!(
                    "{name} is this host: refused unless alerts.allow_private_targets and the channel's allow_private are both set"
                ));
            }
        }
    }
    Some(parsed)
}

/// An answer, its body read up to [`RESPONSE_BODY_LIMIT`].
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body's start, as one line, for reasons.
    pub fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        super::text::truncate(super::text::one_line(text.trim()).as_str(), REASON_BODY_MAX)
    }

    pub fn retry_after_header(&self) -> Option<Duration> {
        let value = self.headers.get(RETRY_AFTER)?.to_str().ok()?;
        parse_retry_after(value, chrono::Utc::now())
    }
}

/// POSTs `body` to `url`, checking a literal-IP host first (names are checked by the
/// resolver). An `Err` is already the outcome (connection failure, refusal).
pub async fn post(
    clients: &Clients,
    url: &Url,
    allow_private: bool,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Result<Answer, Outcome> {
    let literal = match url.host() {
        Some(Host::Ipv4(ip)) => Some(ip.into()),
        Some(Host::Ipv6(ip)) => Some(ip.into()),
        _ => None,
    };
    if let Some(ip) = literal {
        check_ip(ip, allow_private).map_err(|e| Outcome::permanent(e.to_string()))?;
    }
    let client = clients.get(allow_private)?;
    let mut response = client
        .post(url.clone())
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(classify_error)?;
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while body.len() < RESPONSE_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_BODY_LIMIT - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            // The status is what counts; a body cut short (or too slow) changes nothing.
            Err(_) => break,
        }
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// POSTs `body` to `url` and classifies the answer; `retry_after` reads how long the service
/// asks us to wait (most say it in the `Retry-After` header: [`Answer::retry_after_header`]).
pub async fn post_and_classify(
    clients: &Clients,
    url: &Url,
    allow_private: bool,
    headers: HeaderMap,
    body: Vec<u8>,
    retry_after: fn(&Answer) -> Option<Duration>,
) -> Outcome {
    match post(clients, url, allow_private, headers, body).await {
        Ok(answer) => classify(&answer, retry_after(&answer)),
        Err(outcome) => outcome,
    }
}

/// The outcome of an answer: 2xx delivered; 408, 429 and 5xx retried (no earlier than
/// `retry_after` when given); redirects and other 4xx permanent.
pub fn classify(answer: &Answer, retry_after: Option<Duration>) -> Outcome {
    let status = answer.status;
    if status.is_success() {
        return Outcome::Delivered;
    }
    let reason = format!("{status}: {}", answer.snippet());
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        return Outcome::Retry {
            after: retry_after.map(|d| d.min(RETRY_AFTER_MAX)),
            reason,
        };
    }
    if status.is_redirection() {
        let location = answer
            .headers
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| super::text::truncate(l, REASON_BODY_MAX))
            .unwrap_or_default();
        return Outcome::permanent(format!(
            "{status}: redirects are not followed (to `{location}`); configure the final URL"
        ));
    }
    Outcome::permanent(reason)
}

/// A request that got no answer: refused by the SSRF guard (permanent), else retried.
fn classify_error(error: reqwest::Error) -> Outcome {
    // The error's text would contain the URL, which for Discord and Slack is the secret.
    let error = error.without_url();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        if let Some(ResolveError::Refused(refused)) = cause.downcast_ref::<ResolveError>() {
            return Outcome::permanent(refused.to_string());
        }
        source = cause.source();
    }
    if error.is_timeout() {
        return Outcome::retry(format!("timed out: {}", error_chain(&error)));
    }
    Outcome::retry(error_chain(&error))
}

/// An error and its causes, "a: b: c".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// `Retry-After`: delay-seconds or an HTTP-date (IMF-fixdate), as a delay from `now`.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(RETRY_AFTER_MAX));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delay = at.with_timezone(&chrono::Utc) - now;
    Some(
        delay
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(RETRY_AFTER_MAX),
    )
}

pub fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date_and_capped() {
        let now: chrono::DateTime<chrono::Utc> = "2026-12-05T12:00:00Z".parse().unwrap();
        for (value, expected) in [
            ("7", Some(7)),
            (" 120 ", Some(120)),
            ("999999", Some(3600)),
            ("Sat, 05 Dec 2026 12:00:30 GMT", Some(30)),
            ("Sat, 05 Dec 2026 11:00:00 GMT", Some(0)),
            ("Sun, 06 Dec 2026 12:00:00 GMT", Some(3600)),
            ("soon", None),
            ("-5", None),
        ] {
            assert_eq!(
                parse_retry_after(value, now),
                expected.map(Duration::from_secs),
                "{value}"
            );
        }
    }

    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_refused_before_connecting() {
        let clients = Clients::new(Duration::from_secs(5));
        // Port 9 (discard) on loopback: nothing listens, so reaching it would be a Retry.
        let url = Url::parse("http://localhost:9/hook").unwrap();
        let refused = post(&clients, &url, false, HeaderMap::new(), Vec::new()).await;
        match refused {
            Err(Outcome::Permanent { reason }) => {
                assert!(reason.contains("loopback address"), "{reason}");
            }
            _ => panic!("expected a permanent refusal"),
        }
        let allowed = post(&clients, &url, true, HeaderMap::new(), Vec::new()).await;
        assert!(
            matches!(allowed, Err(Outcome::Retry { .. })),
            "connection refused is retried"
        );
    }

    #[test]
    fn urls_are_checked() {
        // (url, allow_private, accepted)
        for (url, allow, ok) in [
            ("https://hooks.example.com/x", false, true),
            ("http://hooks.example.com/x", false, false),
            ("http://hooks.example.com/x", true, true),
            ("ftp://hooks.example.com/x", true, false),
            ("https://user:pw@hooks.example.com/x", false, false),
            ("https://127.0.0.1/x", false, false),
            ("https://127.0.0.1/x", true, true),
            ("https://[::1]/x", false, false),
            ("https://[::ffff:10.0.0.1]/x", false, false),
            ("https://127.1/x", false, false),
            ("https://0x7f.0.0.1/x", false, false),
            ("https://2130706433/x", false, false),
            ("https://169.254.169.254/latest/meta-data", true, false),
            ("https://localhost:8080/x", false, false),
            ("https://api.localhost/x", false, false),
            ("https://localhost:8080/x", true, true),
            ("not a url", true, false),
        ] {
            let mut errors = Vec::new();
            let parsed = validate_url("settings.url", url, allow, &mut errors);
            assert_eq!(parsed.is_some(), ok, "{url} allow={allow}: {errors:?}");
            assert_eq!(errors.is_empty(), ok, "{url}");
            if let Some(e) = errors.first() {
                assert_eq!(e.field, "settings.url");
            }
        }
        let mut errors = Vec::new();
        let long = format!("https://example.com/{}", "a".repeat(URL_MAX));
        assert!(validate_url("settings.url", &long, false, &mut errors).is_none());
    }
}
