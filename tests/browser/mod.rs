//! A minimal WebDriver client (W3C protocol over `reqwest`) for the dashboard's browser
//! tests, and one shared `chromedriver` process for the whole test binary.
//!
//! `chromedriver` is started once on a free port, from a thread that lives as long as the
//! test binary, with `PR_SET_PDEATHSIG` so it dies with the binary. Each test opens its
//! own headless Chromium session; [`Browser`] ends it on drop. Every wait polls the DOM
//! with a bound; nothing sleeps a fixed time to let the page settle.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The shared driver's base URL, or why there is none.
fn driver() -> &'static Result<String, String> {
    static DRIVER: OnceLock<Result<String, String>> = OnceLock::new();
    DRIVER.get_or_init(start_driver)
}

fn start_driver() -> Result<String, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let (tx, rx) = std::sync::mpsc::channel();
    // The spawning thread must outlive every test: PDEATHSIG fires when it exits.
    std::thread::spawn(move || {
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; the closure only calls it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(format!("cannot start chromedriver: {e}")));
            }
        }
    });
    rx.recv()
        .map_err(|e| format!("chromedriver thread: {e}"))??;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(body) = raw_http("GET", &base, "/status")
            && body.contains("\"ready\":true")
        {
            return Ok(base);
        }
        if Instant::now() > deadline {
            return Err("chromedriver did not become ready in 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether browser tests can run. Without `chromedriver` they are skipped loudly, unless
/// `CI` is set: then a missing driver is a failure.
pub fn available() -> bool {
    let found = Command::new("chromedriver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but chromedriver is missing: install chromium and chromium-driver");
    }
    eprintln!(
        "\n!!!!! SKIPPED: chromedriver not found — install `chromium chromium-driver` \
         (apt) to run the dashboard browser tests !!!!!\n"
    );
    false
}

/// A blocking HTTP/1.1 request without a body, for `/status` and the session clean-up
/// in `Drop` (which cannot await).
fn raw_http(method: &str, base: &str, path: &str) -> std::io::Result<String> {
    let host = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    // chromedriver may keep the connection open: stop once the body is complete.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                break;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// One headless Chromium session.
pub struct Browser {
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    /// Opens a session with a window of `width`×`height` CSS pixels.
    pub async fn open(width: u32, height: u32) -> Browser {
        let base = match driver() {
            Ok(b) => b.clone(),
            Err(e) => panic!("{e}"),
        };
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}"), "--hide-scrollbars",
                         "--no-first-run", "--disable-extensions"]
            },
            "unhandledPromptBehavior": "ignore"
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("JSON from chromedriver");
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_owned();
        Browser {
            base,
            session,
            http,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("JSON");
        if r["value"].get("error").is_some() {
            panic!("WebDriver {path}: {}", r["value"]);
        }
        r["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `arguments` available) and returns its value.
    pub async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Polls `script` until it returns a truthy value, up to `limit`; returns the value.
    pub async fn wait_for(&self, what: &str, limit: Duration, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script, json!([])).await;
            let truthy = !(v.is_null()
                || v == json!(false)
                || v == json!("")
                || v == json!(0)
                || v == json!([]));
            if truthy {
                return v;
            }
            if start.elapsed() > limit {
                let dump = self
                    .js("return document.body.innerText.slice(0, 3000)", json!([]))
                    .await;
                panic!("timed out after {limit:?} waiting for {what}; page text:\n{dump}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resizes the window (outer size).
    pub async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64_decode as b64;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = b64(v.as_str().unwrap_or_default());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Emulates `prefers-color-scheme: dark` (Chromium DevTools command through chromedriver).
    pub async fn dark_mode(&self) {
        self.cmd(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setEmulatedMedia",
                        "params": {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}})),
        )
        .await;
    }

    /// Accepts the open `confirm()` dialog, waiting for it to appear.
    pub async fn accept_dialog(&self) {
        let start = Instant::now();
        loop {
            let url = format!("{}/session/{}/alert/accept", self.base, self.session);
            let r: Value = self
                .http
                .post(url)
                .json(&json!({}))
                .send()
                .await
                .expect("chromedriver")
                .json()
                .await
                .expect("JSON");
            if r["value"].get("error").is_none() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no dialog appeared"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = raw_http("DELETE", &self.base, &format!("/session/{}", self.session));
    }
}

/// Standard base64 (what WebDriver screenshots use), without a dependency.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
