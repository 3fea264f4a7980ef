//! A real browser for the dashboard tests: Debian's headless Chromium driven through
//! chromedriver (WebDriver, with fantoccini), one at a time across the test binary; screenshots
//! go to `$CARGO_TARGET_DIR/artifacts/screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::app::TestApp;
use super::session::PASSWORD;

/// Browsers are heavy on a 2-core machine: one at a time across the test binary.
static ONE_BROWSER: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub struct Browser {
    pub client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

fn find_program(names: &[&str]) -> PathBuf {
    for name in names {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let candidate = PathBuf::from(dir).join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
        let lib = PathBuf::from("/usr/lib/chromium").join(name);
        if lib.is_file() {
            return lib;
        }
    }
    panic!("none of {names:?} is installed (apt-get install chromium chromium-driver)");
}

impl Browser {
    pub async fn start() -> Browser {
        let permit = ONE_BROWSER.acquire().await.unwrap();
        let driver_bin = find_program(&["chromedriver"]);
        let chromium = find_program(&["chromium", "chromium-browser"]);
        let port = crate::support::services::free_port().unwrap();
        let driver = tokio::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{webdriver}/status")).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            // sleep: the poll interval of this wait with a deadline (chromedriver answering)
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        // Flags for a closed network, as root, without a display.
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&webdriver)
            .await
            .expect("a WebDriver session with Chromium");
        Browser {
            client,
            _driver: driver,
            _profile: profile,
            _permit: permit,
        }
    }

    /// Opens `path` of the app, signed in with an API token (taken from the URL fragment).
    pub async fn open_with_token(&self, app: &TestApp, path: &str, token: &str) {
        self.client
            .goto(&format!("{}#token={token}", app.url(path)))
            .await
            .unwrap();
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Polls a JavaScript expression until it is truthy; returns its value.
    pub async fn wait_js(&self, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.js(&format!("return ({expression}) || null;")).await;
            if !value.is_null() && value != json!(false) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for `{expression}`"
            );
            // sleep: the poll interval of this wait with a deadline (it names the expression).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Screenshots of the current page at 1280 px and 800 px wide.
    pub async fn screenshots(&self, name: &str) {
        let dir = screenshot_dir();
        for width in [1280u32, 800] {
            self.client.set_window_size(width, 900).await.unwrap();
            // Laid out at the new width (reading it lays the page out); the screenshot paints.
            self.wait_js(
                &format!("document.documentElement.clientWidth <= {width}"),
                Duration::from_secs(10),
            )
            .await;
            let png = self.client.screenshot().await.unwrap();
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
            std::fs::write(dir.join(format!("{name}-{width}.png")), png).unwrap();
        }
        self.client.set_window_size(1280, 900).await.unwrap();
    }

    pub async fn close(self) {
        self.client.close().await.unwrap();
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("artifacts/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Signs in through the login form; waits for the page `next` to know who is signed in.
pub async fn log_in(browser: &Browser, app: &TestApp, username: &str, next: &str) {
    browser
        .client
        .goto(&app.url(&format!("/login?next={next}")))
        .await
        .unwrap();
    browser.type_into("#username", username).await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#submit").await;
    browser
        .wait_js(
            &format!("location.pathname === '{next}' && document.getElementById('whoami')?.textContent === 'user:{username}'"),
            Duration::from_secs(10),
        )
        .await;
}
