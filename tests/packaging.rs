//! Packaging, quickly: the systemd unit's hardening, alert rules and the Grafana dashboard
//! naming only catalogued series, the packaged config starting a fresh install in "set me
//! up" mode (no crash loop), the built-in plugins, `--version` and log formats.
//!
//! The slow checks (building the .deb, `systemd-analyze security`, promtool) are in
//! `packaging/check.sh`, run by CI.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use allstar_nexus::config::Config;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Series the parallel branches add (control, history, Lua watchdog) and Prometheus' own.
const ALSO_ALLOWED: &[&str] = &[
    "nexus_control_actions_total",
    "nexus_history_queue_dropped_total",
    "nexus_history_writes_total",
    "nexus_history_queue_depth",
    "nexus_script_disabled",
];

/// Every series name defined in src/metrics.rs (the catalogue), with histogram suffixes.
fn catalogue() -> BTreeSet<String> {
    let src = read("src/metrics.rs");
    let mut out = BTreeSet::new();
    for name in names_in(&src) {
        for suffix in ["", "_bucket", "_sum", "_count"] {
            out.insert(format!("{name}{suffix}"));
        }
    }
    out.extend(ALSO_ALLOWED.iter().map(|s| s.to_string()));
    assert!(
        out.contains("nexus_ami_up") && out.len() > 40,
        "catalogue parse: {out:?}"
    );
    out
}

/// `nexus_*` identifiers in a text.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("nexus_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary && end > start + "nexus_".len() {
            out.insert(text[start..end].to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

#[test]
fn alert_rules_use_only_catalogued_series() {
    let cat = catalogue();
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("docs/prometheus/alerts.yml")).expect("alerts.yml is YAML");
    let mut alerts = BTreeSet::new();
    let groups = rules["groups"].as_sequence().expect("groups");
    for g in groups {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().expect("alert name");
            let expr = r["expr"].as_str().expect("expr");
            for s in names_in(expr) {
                assert!(cat.contains(&s), "{name}: {s} is not in the catalogue");
            }
            for k in ["summary", "description"] {
                assert!(r["annotations"][k].as_str().is_some(), "{name}: no {k}");
            }
            assert!(
                r["labels"]["severity"].as_str().is_some(),
                "{name}: severity"
            );
            alerts.insert(name.to_owned());
        }
    }
    // What the issue asks for.
    for want in [
        "NexusAmiDown",
        "NexusNodeStale",
        "NexusStuckTransmitter",
        "NexusLinkFlapping",
        "NexusPollsFailing",
        "NexusLuaScriptDisabled",
        "NexusWebSocketClientsDropped",
        "NexusHistoryQueueOverflowing",
    ] {
        assert!(alerts.contains(want), "{want} missing");
    }
    // Every rule has a promtool unit test.
    let tests = read("docs/prometheus/alerts.test.yml");
    for a in &alerts {
        assert!(
            tests.contains(&format!("alertname: {a}")),
            "{a} has no test in alerts.test.yml"
        );
    }
}

#[test]
fn grafana_panels_name_catalogued_series() {
    let cat = catalogue();
    let d: Value = serde_json::from_str(&read("docs/grafana-dashboard.json")).expect("JSON");
    let mut exprs = 0;
    let mut used = BTreeSet::new();
    fn walk(v: &Value, f: &mut dyn FnMut(&str, &str)) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or("?");
                for t in m
                    .get("targets")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    f(title, t["expr"].as_str().unwrap_or(""));
                }
                m.values().for_each(|c| walk(c, f));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, f)),
            _ => {}
        }
    }
    walk(&d["panels"], &mut |title, expr| {
        exprs += 1;
        let names = names_in(expr);
        assert!(!names.is_empty(), "panel {title:?}: no series in {expr:?}");
        for s in names {
            assert!(
                cat.contains(&s),
                "panel {title:?}: {s} is not in the catalogue"
            );
            used.insert(s);
        }
    });
    assert!(exprs > 20, "{exprs} queries");
    for s in [
        "nexus_script_disabled",
        "nexus_control_actions_total",
        "nexus_history_queue_dropped_total",
    ] {
        assert!(used.contains(s), "the dashboard shows {s}");
    }
    let mut ids = BTreeSet::new();
    walk_ids(&d["panels"], &mut ids);
}

/// Panel ids are unique (Grafana needs it).
fn walk_ids(v: &Value, ids: &mut BTreeSet<u64>) {
    for p in v.as_array().into_iter().flatten() {
        if let Some(id) = p["id"].as_u64() {
            assert!(ids.insert(id), "panel id {id} used twice");
        }
        walk_ids(&p["panels"], ids);
    }
}

/// `Key=value` lines of a unit file (comments and sections skipped; repeated keys kept).
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn systemd_unit_is_hardened() {
    let unit = read("packaging/allstar-nexus.service");
    let e = unit_entries(&unit);
    let get = |k: &str| -> Vec<&str> {
        e.iter()
            .filter(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |k: &str| {
        get(k)
            .first()
            .copied()
            .unwrap_or_else(|| panic!("{k} missing"))
    };
    assert_eq!(one("ProtectSystem"), "strict");
    for k in [
        "ProtectHome",
        "PrivateTmp",
        "NoNewPrivileges",
        "PrivateDevices",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ] {
        assert_eq!(one(k), "yes", "{k}");
    }
    assert_eq!(one("CapabilityBoundingSet"), "", "no capabilities");
    assert!(get("SystemCallFilter").contains(&"@system-service"));
    assert_eq!(one("StateDirectory"), "allstar-nexus");
    assert!(one("ReadOnlyPaths").contains("/var/lib/asterisk/astdb.txt"));
    assert!(
        one("ExecReload").contains("-HUP $MAINPID"),
        "reload is SIGHUP"
    );
    let user = one("User");
    assert!(!user.is_empty() && user != "root", "a dedicated user");
    assert!(
        one("ExecStart")
            .starts_with("/usr/bin/allstar-nexus run --config /etc/allstar-nexus/config.yaml"),
        "ExecStart matches the package layout"
    );
    assert_eq!(one("Restart"), "on-failure");
    // The package installs what the unit names.
    let cargo = read("Cargo.toml");
    for want in [
        "\"usr/bin/\"",
        "\"etc/allstar-nexus/config.yaml\"",
        "usr/share/allstar-nexus/plugins/",
        "unit-name = \"allstar-nexus\"",
    ] {
        assert!(
            cargo.contains(want),
            "Cargo.toml [package.metadata.deb] has {want}"
        );
    }
    // The postinst creates the user the unit runs as.
    let postinst = read("packaging/debian/postinst");
    assert!(postinst.contains("adduser --system") && postinst.contains(user));
    assert!(postinst.contains("#DEBHELPER#"));
}

/// The packaged config with a scratch secret path and a free port.
fn packaged_config(secret: &Path, nodes: &str) -> String {
    let text = read("packaging/config.yaml")
        .replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:0")
        .replace(
            "ami_password_file: /etc/allstar-nexus/ami-secret",
            &format!("ami_password_file: {:?}", secret.display().to_string()),
        )
        .replace("nodes: []", nodes)
        .replace(
            "astdb_path: /var/lib/asterisk/astdb.txt",
            "astdb_path: /nonexistent/astdb.txt",
        )
        .replace(
            "script_dirs: [/etc/allstar-nexus/scripts]",
            "script_dirs: [/nonexistent/allstar-nexus/scripts]",
        );
    assert!(
        text.contains("127.0.0.1:0"),
        "packaged config changed shape"
    );
    text
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("nexus-pkg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn packaged_config_is_strict_for_check_config_but_lets_the_service_start() {
    let dir = Scratch::new("cfg");
    let path = dir.0.join("config.yaml");
    std::fs::write(
        &path,
        packaged_config(&dir.0.join("ami-secret"), "nodes: []"),
    )
    .expect("write");
    let strict = Config::load(&path).expect_err("check-config refuses an unfinished setup");
    assert!(strict.to_string().contains("ami_password_file"), "{strict}");
    let c = Config::load_for_service(&path).expect("the service starts");
    assert!(c.plugins_builtin);
    let what = &c.setup_needed["default"];
    assert!(
        what.contains("no AMI secret") && what.contains("ami-secret"),
        "{what}"
    );
    assert!(what.contains("node number"), "{what}");
    // An empty secret file (what the postinst creates) is still "missing".
    std::fs::write(dir.0.join("ami-secret"), "\n").expect("write");
    let c = Config::load_for_service(&path).expect("starts");
    assert!(c.setup_needed["default"].contains("is empty"));
    // Filled in: nothing left to set up.
    std::fs::write(dir.0.join("ami-secret"), "s3cret\n").expect("write");
    std::fs::write(
        &path,
        packaged_config(&dir.0.join("ami-secret"), "nodes: [{node_id: 1999}]"),
    )
    .expect("write");
    let c = Config::load(&path).expect("complete config");
    assert!(c.setup_needed.is_empty());
    assert_eq!(c.servers[0].password, "s3cret");
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_install_without_secret_runs_and_says_what_to_configure() {
    let sim = common::sim_on_tcp(&["1999"]).await;
    let dir = Scratch::new("nosecret");
    let path = dir.0.join("config.yaml");
    let text = packaged_config(&dir.0.join("ami-secret"), "nodes: [{node_id: 1999}]").replace(
        "ami_port: 5038",
        &format!("ami_port: {}", sim.addr().port()),
    );
    std::fs::write(&path, text).expect("write");
    let config = Config::load_for_service(&path).expect("service config");
    let running = allstar_nexus::daemon::start(config, CancellationToken::new())
        .await
        .expect("the daemon starts without a secret");
    let base = format!("http://{}", running.http_addr);
    let mut health = Value::Null;
    for _ in 0..400 {
        health = get_json(&format!("{base}/api/health")).await;
        if health["servers"][0]["last_error_kind"] == "not_configured" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(health["status"], "degraded", "{health}");
    let summary = health["summary"].as_str().unwrap_or("");
    for want in ["no AMI secret", "ami-secret", "manager.conf", "restart"] {
        assert!(summary.contains(want), "{want} in {summary}");
    }
    assert!(
        !summary.contains("[nexus]"),
        "no AMI user name in answers: {summary}"
    );
    // Asterisk was not bothered with an empty password.
    assert_eq!(sim.session_count(), 0);
    // The built-in plugins run (no plugin directory on disk).
    let mut scripts = Value::Null;
    for _ in 0..400 {
        scripts = get_json(&format!("{base}/api/scripts")).await;
        let list = scripts["scripts"].as_array().cloned().unwrap_or_default();
        if list.len() == 3 && list.iter().all(|s| s["status"] == "running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let list = scripts["scripts"].as_array().cloned().unwrap_or_default();
    let names: BTreeSet<&str> = list.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["adaptive_polling.lua", "alerts.lua", "voter.lua"]),
        "{scripts}"
    );
    assert!(list.iter().all(|s| s["status"] == "running"), "{scripts}");
    assert!(
        list.iter().all(|s| s["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("(built-in)/"))),
        "{scripts}"
    );
    running.shutdown.cancel();
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_copy_of_a_plugin_replaces_the_built_in_one() {
    let dir = Scratch::new("override");
    std::fs::write(
        dir.0.join("alerts.lua"),
        "function mine() return 'operator copy' end\n",
    )
    .expect("write");
    let yaml = format!(
        "listen: 127.0.0.1:0\nami_enabled: false\nplugins_builtin: true\nscript_dirs: [{:?}]\n",
        dir.0.display().to_string()
    );
    let config = Config::parse(&yaml, "test", None).expect("config");
    let running = allstar_nexus::daemon::start(config, CancellationToken::new())
        .await
        .expect("daemon");
    let copy = std::fs::read(dir.0.join("alerts.lua")).expect("read");
    assert!(
        running
            .scripts
            .wait_version("alerts.lua", &copy, Duration::from_secs(10))
            .await,
        "the operator's alerts.lua runs"
    );
    assert!(
        running
            .scripts
            .wait_until(Duration::from_secs(10), |h| h
                .version("voter.lua")
                .is_some())
            .await,
        "voter.lua still comes built in"
    );
    let got = running
        .scripts
        .call("alerts.lua", "mine", vec![])
        .await
        .expect("call");
    assert_eq!(got, "operator copy");
    let list = running.app.scripts.list();
    let alerts: Vec<_> = list.iter().filter(|s| s.name == "alerts.lua").collect();
    assert_eq!(alerts.len(), 1, "one alerts.lua: {list:?}");
    assert!(!alerts[0].path.starts_with("(built-in)"), "{list:?}");
    running.shutdown.cancel();
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_allstar-nexus"))
}

#[test]
fn version_names_the_git_revision() {
    let out = bin().arg("--version").output().expect("run --version");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with(&format!(
            "allstar-nexus {} (git ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(!text.contains("(git )"), "{text}");
}

/// Starts `allstar-nexus run` (no AMI, port 0) with stderr to `stderr`, waits until it
/// logs that it listens, stops it, and returns what it logged.
fn run_daemon_logging(args: &[&str], envs: &[(&str, String)], stderr: Stdio) -> Child {
    let dir = std::env::temp_dir().join(format!("nexus-pkg-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        "listen: 127.0.0.1:0\nami_enabled: false\nscript_dirs: []\nastdb_path: /nonexistent\n",
    )
    .expect("config");
    let mut cmd = bin();
    cmd.args(args)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn the daemon")
}

/// Reads lines from a piped stderr until the "listening" line (the daemon is up).
fn lines_until_listening(child: &mut Child) -> Vec<String> {
    let err = child.stderr.take().expect("stderr piped");
    let mut lines = Vec::new();
    for line in BufReader::new(err).lines() {
        let line = line.expect("utf-8 log line");
        let done = line.contains("listening on");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.last().is_some_and(|l| l.contains("listening on")),
        "{lines:?}"
    );
    lines
}

#[test]
fn logs_into_a_pipe_carry_no_colour_codes() {
    let mut child = run_daemon_logging(&[], &[], Stdio::piped());
    let lines = lines_until_listening(&mut child);
    assert!(lines.iter().all(|l| !l.contains('\x1b')), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("INFO")), "{lines:?}");
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let mut child = run_daemon_logging(&["--log-format", "json"], &[], Stdio::piped());
    let lines = lines_until_listening(&mut child);
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{v}"
        );
    }
}

#[cfg(unix)]
#[test]
fn under_the_journal_lines_carry_a_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let dir = Scratch::new("journal");
    let log = dir.0.join("stderr.log");
    let file = std::fs::File::create(&log).expect("log file");
    let meta = file.metadata().expect("meta");
    // As systemd does: JOURNAL_STREAM names the device and inode of our stderr.
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = run_daemon_logging(&[], &[("JOURNAL_STREAM", stream)], Stdio::from(file));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening on") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = text
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap_or_else(|| panic!("no listening line: {text}"));
    assert!(line.starts_with("<6>AllStar Nexus listening"), "{line:?}");
    assert!(!text.contains('\x1b'), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_its_plugins_from_anywhere() {
    // An empty working directory: no plugins/ beside it, as for an installed binary.
    let dir = Scratch::new("demo-cwd");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_allstar-nexus"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .current_dir(&dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn demo");
    let out = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.split_whitespace().find(|w| w.ends_with("/api/health")) {
                return url.trim_end_matches("/api/health").to_owned();
            }
        }
        panic!("the demo printed no URL");
    })
    .await
    .expect("demo starts");
    let mut list = Vec::new();
    for _ in 0..1000 {
        let v = get_json(&format!("{base}/api/scripts")).await;
        list = v["scripts"].as_array().cloned().unwrap_or_default();
        if list.len() >= 3 && list.iter().all(|s| s["status"] == "running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let builtin: BTreeSet<&str> = list
        .iter()
        .filter(|s| s["status"] == "running")
        .filter(|s| {
            s["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("(built-in)/"))
        })
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        builtin,
        BTreeSet::from(["adaptive_polling.lua", "alerts.lua", "voter.lua"]),
        "{list:?}"
    );
    let _ = child.kill().await;
}
