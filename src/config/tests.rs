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
        &["polling_interval_seconds (line 3)", "at least 1"],
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
