//! The shipped nginx site, run for real in front of a stand-in for ddms: what a browser gets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{nginx_config, tempdir};

/// A stand-in for a ddms slot behind a trusted proxy: every answer carries ddms' own
/// Strict-Transport-Security (as `http::security` sends it when the proxy says https).
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    port
}

fn answer(mut stream: TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=31536000\r\n\
          Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    );
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HSTS is sent exactly once on every HTTPS answer, proxied or nginx's own: nginx, which
/// terminates TLS, sends it and drops ddms' copy (before, `/` carried it twice).
#[test]
fn hsts_is_sent_once_behind_nginx() {
    let dir = tempdir("nginx-hsts");
    let ddms = upstream();
    let (http, https) = (
        crate::ports::free_port().unwrap(),
        crate::ports::free_port().unwrap(),
    );
    let conf = nginx_config(&dir, http, https, Some(&format!("127.0.0.1:{ddms}")));
    let mut nginx = Nginx(
        Command::new("nginx")
            .args(["-p", &dir.display().to_string(), "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx is installed"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", https)).is_err() {
        if let Some(status) = nginx.0.try_wait().unwrap() {
            let mut err = String::new();
            nginx
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("nginx exited ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "nginx did not listen on {https}");
        // sleep: the poll interval of this wait with a deadline (nginx listening)
        std::thread::sleep(Duration::from_millis(50));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut seen = Vec::new();
        for (path, status) in [("/", 200), ("/api/stream", 200), ("/metrics", 404)] {
            let response = client
                .get(format!("https://127.0.0.1:{https}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), status, "{path}");
            let values: Vec<String> = response
                .headers()
                .get_all("strict-transport-security")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            seen.push((path, values));
        }
        seen
    });
    for (path, values) in &seen {
        // nginx's policy, the same everywhere.
        assert_eq!(
            values,
            &["max-age=63072000"],
            "{path}: Strict-Transport-Security {values:?}; all: {seen:?}"
        );
    }
    drop(nginx);
    std::fs::remove_dir_all(dir).unwrap();
}
