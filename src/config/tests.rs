use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, "test.yaml", None).map_err(|e| e.to_string())
}

const MINIMAL: &str = "ami_username: admin\nami_password: s3cret\nnodes:\n  - node_id: 1999\n";

#[test]
fn flat_keys_make_one_default_server_with_defaults() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.servers.len(), 1);
    let s = &c.servers[0];
    assert_eq!(
        (s.name.as_str(), s.host.as_str(), s.port),
        ("default", "127.0.0.1", 5038)
    );
    assert_eq!(s.nodes[0].node_id, "1999");
    assert_eq!(s.nodes[0].poll_interval, Duration::from_secs(60));
    assert_eq!(c.ami.retry_interval, Duration::from_secs(15));
    assert_eq!(c.ami.retry_max, Duration::from_secs(60));
    assert_eq!(c.shutdown_grace, Duration::from_secs(5));
    assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(
        c.script_dirs,
        vec![PathBuf::from("plugins"), PathBuf::from("scripts")]
    );
}

#[test]
fn operator_keys_verbatim_and_durations() {
    let c = parse(
        "ami_enabled: true\nami_host: 10.0.0.5\nami_port: 5039\nami_username: admin\nami_password: x\n\
         ami_retry_interval: 5s\nami_retry_max: 2m\ndisable_link_poller: true\npolling_interval_seconds: 30\n\
         nodes:\n  - node_id: 43732\n    polling_interval: 10\n  - node_id: \"2000\"\n",
    )
    .expect("valid");
    assert_eq!(c.ami.retry_interval, Duration::from_secs(5));
    assert_eq!(c.ami.retry_max, Duration::from_secs(120));
    assert!(c.disable_link_poller);
    let nodes = &c.servers[0].nodes;
    assert_eq!(nodes[0].poll_interval, Duration::from_secs(10));
    assert_eq!(nodes[1].poll_interval, Duration::from_secs(30));
    assert_eq!(c.servers[0].address(), "10.0.0.5:5039");
}

#[test]
fn several_servers() {
    let c = parse(
        "ami_servers:\n  - name: hub\n    host: 127.0.0.1\n    username: a\n    password: b\n    nodes: [{node_id: 1}]\n  - name: rpt\n    port: 6000\n    username: a\n    password: b\n    nodes: [{node_id: 2}, {node_id: 3}]\n",
    )
    .expect("valid");
    assert_eq!(
        c.servers
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["hub", "rpt"]
    );
    assert_eq!(c.servers[1].nodes.len(), 2);
}

#[test]
fn password_from_env_and_file() {
    // SAFETY-free: a variable name unique to this test.
    unsafe { std::env::set_var("NEXUS_TEST_PW_1", "from-env") };
    let c = parse("ami_username: a\nami_password_env: NEXUS_TEST_PW_1\nnodes: [{node_id: 1}]\n")
        .expect("valid");
    assert_eq!(c.servers[0].password, "from-env");
    let dir = std::env::temp_dir().join(format!("nexus-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    std::fs::write(dir.join("pw"), "from-file\n").expect("write");
    let c = Config::parse(
        "ami_username: a\nami_password_file: pw\nnodes: [{node_id: 1}]\n",
        "t",
        Some(&dir),
    )
    .expect("valid");
    assert_eq!(c.servers[0].password, "from-file");
    assert!(
        !format!("{:?}", c.servers[0]).contains("from-file"),
        "Debug must not show the password"
    );
}

fn assert_err(text: &str, needles: &[&str]) {
    let e = parse(text).expect_err("must be rejected");
    for n in needles {
        assert!(e.contains(n), "error {e:?} should mention {n:?}");
    }
}

#[test]
fn bad_files_name_the_key_and_line() {
    assert_err(
        "ami_username: a\nami_pasword: b\nnodes: [{node_id: 1}]\n",
        &["unknown key", "ami_pasword", "line 2"],
    );
    assert_err(
        "ami_username: a\nami_password: b\nami_retry_interval: soon\nnodes: [{node_id: 1}]\n",
        &["ami_retry_interval", "soon"],
    );
    assert_err(
        "ami_username: a\nami_password: b\nami_port: 99999\nnodes: [{node_id: 1}]\n",
        &["ami_port"],
    );
    assert_err(
        "ami_username: a\nnodes: [{node_id: 1}]\n",
        &["ami_password", "missing"],
    );
    assert_err(
        "ami_username: a\nami_password: b\n",
        &["nodes", "lists no nodes"],
    );
    assert_err("listen: 127.0.0.1:9000\n", &["no AMI server"]);
    assert_err(
        "ami_username: a\nami_password: b\nlisten: everywhere\nnodes: [{node_id: 1}]\n",
        &["listen (line 3)", "everywhere"],
    );
    assert_err(
        "ami_username: a\nami_password: b\npolling_interval_seconds: 0\nnodes: [{node_id: 1}]\n",
        &["polling_interval_seconds (line 3)", "between 1 and 86400"],
    );
    assert_err(
        "ami_username: a\nami_password: b\nami_retry_interval: 2m\nami_retry_max: 1m\nnodes: [{node_id: 1}]\n",
        &["ami_retry_max (line 4)", "shorter"],
    );
    assert_err(
        "ami_username: a\nami_password: b\nnodes: [{node_id: 1, pollng_interval: 3}]\n",
        &["pollng_interval", "line 3"],
    );
    assert_err(
        "ami_username: a\nami_password: b\nnodes: [{node_id: 1}]\nami_servers:\n  - name: x\n    username: a\n    password: b\n    nodes: [{node_id: 1}]\n",
        &["node 1 is listed twice"],
    );
    assert_err(
        "ami_username: a\nami_password_env: NEXUS_TEST_UNSET_VAR\nnodes: [{node_id: 1}]\n",
        &["ami_password_env", "NEXUS_TEST_UNSET_VAR"],
    );
    assert_err("", &["empty"]);
    assert_err(
        "ami_username: a\nami_password: b\nnodes: [{node_id: 1}]\nalert_webhooks: [{url: ftp://x}]\n",
        &["url", "http"],
    );
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../config.example.yaml");
    unsafe { std::env::set_var("NEXUS_AMI_PASSWORD", "example") };
    parse(text).expect("config.example.yaml must be valid");
}

#[test]
fn huge_durations_are_config_errors_not_panics() {
    let e = parse(&format!("{MINIMAL}ami_retry_max: 1e20\n")).unwrap_err();
    assert!(
        e.contains("ami_retry_max") && e.contains("line 5") && e.contains("too long"),
        "{e}"
    );
    let e = parse(&format!("{MINIMAL}ami_retry_max: 2h\n")).unwrap_err();
    assert!(
        e.contains("ami_retry_max (line 5): must be between 1ms and 1h, got 2h"),
        "{e}"
    );
    let e = parse(&format!("{MINIMAL}ami_connect_timeout: 99999y\n")).unwrap_err();
    assert!(e.contains("ami_connect_timeout"), "{e}");
}

#[test]
fn numbers_have_ranges_named_in_the_error() {
    for (yaml, want) in [
        (
            "websocket:\n  max_clients: 0\n",
            "max_clients (line 6): must be between 1 and 100000, got 0",
        ),
        (
            "lua:\n  memory_limit_mb: 100000\n",
            "memory_limit_mb (line 6): must be between 1 and 4096",
        ),
        (
            "ami_max_frame_bytes: 10\n",
            "ami_max_frame_bytes (line 5): must be between 65536 and 268435456",
        ),
        (
            "polling_interval_seconds: 1e12\n",
            "must be between 1 and 86400 seconds",
        ),
        (
            "lua:\n  callback_budget: 10m\n",
            "callback_budget (line 6): must be between 1ms and 1m",
        ),
        (
            "ami_port: 0\n",
            "ami_port (line 5): must be between 1 and 65535",
        ),
        (
            "history:\n  retention_days: 100000\n",
            "history.retention_days (line 6): must be between 0 and 36500, got 100000",
        ),
        // `queue` is also a `lua:` key: the line is the one under `history:`.
        (
            "lua:\n  queue: 5\nhistory:\n  queue: 0\n",
            "history.queue (line 8): must be between 1 and 1000000, got 0",
        ),
        (
            "history:\n  queue: 2000000\n",
            "history.queue (line 6): must be between 1 and 1000000",
        ),
        (
            "control:\n  rate_limit_per_minute: 0\n",
            "control.rate_limit_per_minute (line 6): must be between 1 and 10000, got 0",
        ),
        (
            "control:\n  login_slowdown_after: 5000\n",
            "control.login_slowdown_after (line 6): must be between 0 and 1000",
        ),
        (
            "control:\n  login_lockout_after: 0\n",
            "control.login_lockout_after (line 6): must be between 1 and 1000, got 0",
        ),
        (
            "control:\n  session_ttl: 90days\n",
            "control.session_ttl (line 6): must be between 1m and 30days",
        ),
        (
            "control:\n  login_lockout: 2days\n",
            "control.login_lockout (line 6): must be between 1s and 1day",
        ),
        (
            "control:\n  verify_timeout: 1h\n",
            "control.verify_timeout (line 6): must be between 100ms and 5m, got 1h",
        ),
        (
            "control:\n  verify_timeout: 10ms\n",
            "control.verify_timeout (line 6): must be between 100ms and 5m",
        ),
        (
            "ami_actions_per_second: 0\n",
            "ami_actions_per_second (line 5): must be between 1 and 1000, got 0",
        ),
    ] {
        let e = parse(&format!("{MINIMAL}{yaml}")).unwrap_err();
        assert!(e.contains(want), "{yaml:?}: {e}");
    }
}

#[test]
fn node_ids_are_digits_and_event_masks_are_checked() {
    let e =
        parse("ami_username: a\nami_password: b\nnodes:\n  - node_id: 1999\n  - node_id: abc\n")
            .unwrap_err();
    assert!(
        e.contains("node_id (line 5): \"abc\" is not a node number"),
        "{e}"
    );
    let e = parse(&format!("{MINIMAL}ami_events: bogus\n")).unwrap_err();
    assert!(
        e.contains("ami_events (line 5)") && e.contains("not an AMI event mask"),
        "{e}"
    );
    for ok in ["call", "call,dialplan", "on", "off", "0", "Call, System"] {
        parse(&format!("{MINIMAL}ami_events: {ok}\n")).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn repeated_keys_name_their_line() {
    let e = parse("ami_username: a\nami_password: b\nnodes: [{node_id: 1}]\nami_username: c\n")
        .unwrap_err();
    assert!(
        e.contains("ami_username (line 4): is repeated (first at line 1)"),
        "{e}"
    );
    let e = parse(
        "ami_username: a\nami_password: b\nlua:\n  queue: 5\n  memory_limit_mb: 4\n  queue: 6\n\
         nodes: [{node_id: 1}]\n",
    )
    .unwrap_err();
    assert!(
        e.contains("queue (line 6): is repeated (first at line 4)"),
        "{e}"
    );
    // The same key in different list items or sections is not a repeat.
    parse(
        "ami_servers:\n  - name: a\n    username: u\n    password: p\n    nodes:\n      - node_id: 1\n      - node_id: 2\n\
         \x20 - name: b\n    username: u\n    password: p\n    nodes: [{node_id: 3}]\n",
    )
    .expect("valid");
    // A node listed twice points at the second listing.
    let e = parse("ami_username: a\nami_password: b\nnodes:\n  - node_id: 7\n  - node_id: 8\n  - node_id: 7\n")
        .unwrap_err();
    assert!(
        e.contains("node_id (line 6): node 7 is listed twice"),
        "{e}"
    );
}

#[test]
fn byte_order_mark_is_accepted() {
    let c = parse(&format!("\u{feff}{MINIMAL}")).expect("a BOM is fine");
    assert_eq!(c.servers[0].nodes[0].node_id, "1999");
}

#[test]
fn endless_config_and_secret_files_are_refused_fast() {
    let started = std::time::Instant::now();
    let e = Config::load(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("larger than the 1048576 bytes allowed"), "{e}");
    let e = parse("ami_username: a\nami_password_file: /dev/zero\nnodes: [{node_id: 1}]\n")
        .unwrap_err();
    assert!(
        e.contains("ami_password_file (line 2): cannot read /dev/zero") && e.contains("4096"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn deep_nesting_is_refused_fast() {
    let flow = format!(
        "{MINIMAL}plugins:\n  x: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut block = format!("{MINIMAL}plugins:\n");
    let mut depth = 1;
    while block.len() < 200_000 {
        block.push_str(&" ".repeat(depth));
        block.push_str("k:\n");
        depth += 1;
    }
    for text in [flow, block] {
        let started = std::time::Instant::now();
        let e = parse(&text).unwrap_err();
        assert!(e.contains("nesting is deeper than 64 levels"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    // Ordinary nesting and Lua in a block scalar are fine.
    parse(&format!(
        "{MINIMAL}plugins:\n  a:\n    b:\n      c: [1, [2, {{d: 3}}]]\n  code: |\n{}\n",
        (0..100)
            .map(|i| format!("    {}x = 1", " ".repeat(i)))
            .collect::<Vec<_>>()
            .join("\n")
    ))
    .expect("valid");
}

#[test]
fn shutdown_grace_defaults_to_5s_and_is_capped_at_60s() {
    assert_eq!(
        parse(MINIMAL).expect("valid").shutdown_grace,
        Duration::from_secs(5)
    );
    let c = parse(&format!("{MINIMAL}shutdown_grace: 60s\n")).expect("60 s is allowed");
    assert_eq!(c.shutdown_grace, MAX_SHUTDOWN_GRACE);
    assert_eq!(MAX_SHUTDOWN_GRACE, Duration::from_secs(60));
    let c = parse(&format!("{MINIMAL}shutdown_grace: 0\n")).expect("0 is allowed");
    assert_eq!(c.shutdown_grace, Duration::ZERO);
    let e = parse(&format!("{MINIMAL}shutdown_grace: 61s\n")).unwrap_err();
    assert!(
        e.contains("shutdown_grace (line 5): must be between 0s and 1m, got 1m 1s"),
        "{e}"
    );
}

#[test]
fn webhook_min_severity_is_parsed_at_load() {
    let hook = |sev: &str| {
        format!("{MINIMAL}alert_webhooks:\n  - url: http://127.0.0.1:9/\n    min_severity: {sev}\n")
    };
    let e = parse(&hook("critcal")).unwrap_err();
    assert!(
        e.contains("min_severity (line 7)")
            && e.contains("\"critcal\" is not a severity")
            && e.contains("info, warning (warn), critical (crit, error)"),
        "{e}"
    );
    for (word, want) in [
        ("info", Severity::Info),
        ("warning", Severity::Warning),
        ("WARN", Severity::Warning),
        ("critical", Severity::Critical),
        ("error", Severity::Critical),
    ] {
        let c = parse(&hook(word)).unwrap_or_else(|e| panic!("{word}: {e}"));
        assert_eq!(c.alert_webhooks[0].min_severity, Some(want), "{word}");
    }
    let c = parse(&format!(
        "{MINIMAL}alert_webhooks:\n  - url: http://127.0.0.1:9/\n"
    ))
    .expect("valid");
    assert_eq!(c.alert_webhooks[0].min_severity, None);
}
