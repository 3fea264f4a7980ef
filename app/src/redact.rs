//! Hiding the secrets URLs carry before they are printed or logged: passwords in the userinfo
//! (`postgres://ddms:[redacted]@db/ddms`), a userinfo that is a bare token
//! (`https://[redacted]@host`), and query parameters whose name says they hold a secret
//! (`?password=`, `?sslpassword=`, `?X-Amz-Security-Token=`, …).

/// Stands in for every secret.
pub const REDACTED: &str = "[redacted]";

/// Fragments of query parameter names (compared in lower case) that mark the value a secret.
/// Generous on purpose: hiding a harmless value costs nothing, showing a password does.
const SECRET_PARAMETERS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "credential",
    "signature",
    "sig",
];

fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETERS.iter().any(|part| name.contains(part))
}

/// `url` with its secrets replaced by `[redacted]`; unchanged (byte for byte) when it holds
/// none. A user name without a password is kept: database URLs carry one routinely. Text that is not a URL is hidden whole: it may be a URL with a typo, password included.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "[unparseable url redacted]".into();
    };
    let mut changed = false;
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(REDACTED));
        changed = true;
    }
    if has_secret_query(&parsed) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_secret_parameter(&name) {
                    REDACTED.to_string()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if !changed {
        return url.to_string();
    }
    parsed
        .to_string()
        .replace("%5Bredacted%5D", REDACTED)
        .replace("%5Bredacted%5d", REDACTED)
}

fn has_secret_query(url: &url::Url) -> bool {
    url.query_pairs()
        .any(|(name, _)| is_secret_parameter(&name))
}

/// Like [`redact_url`], but the whole userinfo is hidden: for endpoints
/// (`https://ACCESSKEY:SECRET@minio:9000`) where the user part is a credential, not a name.
pub fn redact_endpoint(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() => {
            let _ = parsed.set_username(REDACTED);
            redact_url(parsed.as_str()).replace("%5Bredacted%5D", REDACTED)
        }
        _ => redact_url(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_the_userinfo_are_hidden_and_names_kept() {
        assert_eq!(
            redact_url("postgres://ddms:hunter2@db:5432/ddms"),
            "postgres://ddms:[redacted]@db:5432/ddms"
        );
        assert_eq!(
            redact_url("sqlite://./data/ddms.db"),
            "sqlite://./data/ddms.db"
        );
        assert_eq!(
            redact_url("postgres://ddms@db/ddms?sslmode=require"),
            "postgres://ddms@db/ddms?sslmode=require"
        );
    }

    #[test]
    fn secret_query_parameters_are_hidden_and_others_kept() {
        let shown = redact_url(
            "postgres://ddms@db/ddms?sslmode=require&password=hunter2&sslpassword=k3y&application_name=ddms",
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
        assert!(shown.contains("sslmode=require"), "{shown}");
        assert!(shown.contains("application_name=ddms"), "{shown}");
        assert!(shown.contains("password=[redacted]"), "{shown}");
        for name in [
            "PASS",
            "pwd",
            "Secret",
            "token",
            "key",
            "X-Amz-Security-Token",
            "api_key",
        ] {
            let shown = redact_url(&format!("https://h/?{name}=s3cr3t"));
            assert!(!shown.contains("s3cr3t"), "{name}: {shown}");
        }
    }

    #[test]
    fn endpoints_hide_the_whole_userinfo() {
        assert_eq!(
            redact_endpoint("https://AKIAEXAMPLE@minio.local:9000"),
            "https://[redacted]@minio.local:9000/"
        );
        let shown = redact_endpoint("https://AKIAEXAMPLE:s3cr3t@minio.local:9000/?token=t0k");
        assert!(
            !shown.contains("AKIAEXAMPLE") && !shown.contains("s3cr3t") && !shown.contains("t0k"),
            "{shown}"
        );
        assert_eq!(
            redact_endpoint("https://minio.local:9000"),
            "https://minio.local:9000"
        );
    }

    #[test]
    fn text_that_is_no_url_is_hidden_whole() {
        assert_eq!(
            redact_url("postgres//ddms:pw@db"),
            "[unparseable url redacted]"
        );
    }
}
