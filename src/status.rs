//! `allstar-nexus status`: the running daemon's nodes, links, who is keyed and AMI status as
//! a terminal table, read from its API — what an operator types over SSH instead of
//! `asterisk -rx "rpt xstat"`. `--watch` redraws live from the WebSocket stream.
//!
//! Reading is tolerant (unknown fields ignored, missing ones defaulted) so a `status` of one
//! version can read a daemon of another. Every value shown is stripped of control
//! characters: text from the network never reaches the terminal as escape sequences.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// Environment variable read for the API token when `--token` is not given (keeps it out
/// of the process list).
pub const TOKEN_ENV: &str = "NEXUS_TOKEN";
/// A request to the daemon may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `--watch` redraws at most this often.
const REDRAW_EVERY: Duration = Duration::from_millis(250);

/// `allstar-nexus status` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Base URL of the daemon (its `listen` address, or the reverse proxy in front).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API token, sent as `Authorization: Bearer`; default: the NEXUS_TOKEN variable.
    #[arg(long)]
    pub token: Option<String>,
    /// Redraw live from the WebSocket stream until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

/// One AMI server as `/api/health` shows it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Server {
    pub name: String,
    pub host: String,
    pub connected: bool,
    pub state: String,
    pub for_seconds: Option<u64>,
    pub last_error: Option<String>,
}

/// The parts of `/api/health` shown.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Health {
    pub status: String,
    pub summary: String,
    pub version: String,
    pub servers: Vec<Server>,
}

/// One link as `/api/nodes` shows it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Link {
    pub node: String,
    pub callsign: Option<String>,
    pub ip: Option<String>,
    pub direction: Option<String>,
    pub mode: Option<String>,
    pub state: Option<String>,
    pub elapsed: String,
    pub keyed: bool,
    pub last_keyed_seconds: Option<u64>,
}

/// One node as `/api/nodes` shows it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Node {
    pub node_id: String,
    pub server: String,
    pub rx_keyed: bool,
    pub tx_keyed: bool,
    pub stale: bool,
    pub links: Vec<Link>,
}

/// What the table shows: health and nodes, kept current by WebSocket messages.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub base: String,
    pub health: Health,
    pub nodes: Vec<Node>,
    /// Last change applied (resume point).
    pub seq: u64,
    /// The daemon run's id, when it sends one (resume with `epoch=`).
    pub epoch: Option<String>,
}

impl View {
    /// Applies one WebSocket message; `true` when the table changed.
    pub fn apply(&mut self, msg: &Value) -> bool {
        if let Some(e) = msg.get("epoch").and_then(Value::as_str) {
            self.epoch = Some(e.to_owned());
        }
        let seq = msg.get("seq").and_then(Value::as_u64);
        match msg.get("type").and_then(Value::as_str) {
            Some("snapshot") => {
                self.nodes = msg
                    .get("nodes")
                    .cloned()
                    .and_then(|n| serde_json::from_value(n).ok())
                    .unwrap_or_default();
                if let Some(s) = seq {
                    self.seq = s;
                }
                true
            }
            Some("event") => {
                if let Some(s) = seq {
                    self.seq = s;
                }
                msg.get("event").is_some_and(|e| self.apply_change(e))
            }
            _ => false,
        }
    }

    /// Applies one change as `docs/api.md` says: `link_*` replace or remove the link named
    /// `link.node`, `tx_*`/`rx_*` set the flags, `ami_*` mark the server and its nodes.
    fn apply_change(&mut self, e: &Value) -> bool {
        let kind = e.get("kind").and_then(Value::as_str).unwrap_or("");
        let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let (node_id, server) = (text("node"), text("server"));
        if let Some(up) = match kind {
            "ami_connected" => Some(true),
            "ami_disconnected" => Some(false),
            _ => None,
        } {
            for s in self.health.servers.iter_mut().filter(|s| s.name == server) {
                s.connected = up;
                s.state = if up { "connected" } else { "disconnected" }.into();
                s.for_seconds = Some(0);
                s.last_error = e.get("error").and_then(Value::as_str).map(str::to_owned);
            }
            for n in self.nodes.iter_mut().filter(|n| n.server == server) {
                n.stale = !up;
            }
            return true;
        }
        let Some(node) = self.nodes.iter_mut().find(|n| n.node_id == node_id) else {
            return false;
        };
        match kind {
            "tx_keyed" | "tx_unkeyed" => node.tx_keyed = kind == "tx_keyed",
            "rx_keyed" | "rx_unkeyed" => node.rx_keyed = kind == "rx_keyed",
            k if k.starts_with("link_") => {
                let Some(link) = e
                    .get("link")
                    .cloned()
                    .and_then(|l| serde_json::from_value::<Link>(l).ok())
                else {
                    return false;
                };
                let at = node.links.iter().position(|l| l.node == link.node);
                match (k, at) {
                    ("link_disconnected", Some(i)) => {
                        node.links.remove(i);
                    }
                    ("link_disconnected", None) => return false,
                    (_, Some(i)) => node.links[i] = link,
                    (_, None) => node.links.push(link),
                }
            }
            _ => return false,
        }
        true
    }

    /// The terminal table.
    pub fn render(&self) -> String {
        let h = &self.health;
        let mut out = format!(
            "AllStar Nexus {} at {} — {}\n{}\n\n",
            clean(&h.version),
            clean(&self.base),
            clean(&h.status),
            clean(&h.summary)
        );
        if !h.servers.is_empty() {
            let rows = h.servers.iter().map(server_row).collect();
            out.push_str(&table(
                &["AMI SERVER", "ADDRESS", "STATE", "LAST ERROR"],
                rows,
            ));
            out.push('\n');
        }
        if self.nodes.is_empty() {
            out.push_str("No nodes.\n");
        }
        for n in &self.nodes {
            out.push_str(&node_block(n));
        }
        out
    }
}

fn server_row(s: &Server) -> Vec<String> {
    let state = match s.for_seconds {
        Some(secs) if !s.state.is_empty() => format!("{} for {}", s.state, short_duration(secs)),
        _ => s.state.clone(),
    };
    vec![
        s.name.clone(),
        s.host.clone(),
        state,
        s.last_error.clone().unwrap_or_else(|| "-".into()),
    ]
}

fn node_block(n: &Node) -> String {
    let mut out = format!(
        "NODE {}  server {}  TX {}  RX {}  {} link(s){}\n",
        clean(&n.node_id),
        clean(&n.server),
        if n.tx_keyed { "KEYED" } else { "idle" },
        if n.rx_keyed { "KEYED" } else { "idle" },
        n.links.len(),
        if n.stale {
            "  STALE (AMI down: may be out of date)"
        } else {
            ""
        }
    );
    if !n.links.is_empty() {
        let mut links: Vec<&Link> = n.links.iter().collect();
        links.sort_by(|a, b| a.node.cmp(&b.node));
        let rows = links.into_iter().map(link_row).collect();
        let t = table(
            &[
                "LINK",
                "CALLSIGN",
                "MODE",
                "DIR",
                "STATE",
                "CONNECTED",
                "KEYED",
                "IP",
            ],
            rows,
        );
        for line in t.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    out
}

fn link_row(l: &Link) -> Vec<String> {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let keyed = if l.keyed {
        "KEYED".to_owned()
    } else {
        match l.last_keyed_seconds {
            Some(s) => format!("{} ago", short_duration(s)),
            None => "-".into(),
        }
    };
    vec![
        l.node.clone(),
        dash(&l.callsign),
        mode_name(l.mode.as_deref()).to_owned(),
        dash(&l.direction),
        dash(&l.state),
        l.elapsed.clone(),
        keyed,
        dash(&l.ip),
    ]
}

/// app_rpt's mode letters in words.
pub fn mode_name(mode: Option<&str>) -> &str {
    match mode {
        Some("T") => "transceive",
        Some("R") => "monitor",
        Some("L") => "local monitor",
        Some("C") => "connecting",
        Some(other) => other,
        None => "-",
    }
}

/// `59s`, `12m 5s`, `3h 2m`, `4d 1h`.
pub fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s / 60) % 60),
        s => format!("{}d {}h", s / 86_400, (s / 3600) % 24),
    }
}

/// Text from the network, safe for a terminal: control characters (escape sequences,
/// carriage returns) become `?`, and very long values are cut.
pub fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate().take(widths.len()) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A client of one daemon.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `url` is the daemon's base URL (`http://host:port`, maybe with a path prefix).
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Client> {
        let base = url.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "--url must start with http:// or https://, got {:?}",
                clean(url)
            );
        }
        if token.as_deref().is_some_and(|t| t.contains(['\r', '\n'])) {
            bail!("the token must be one line");
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client { base, token, http })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| {
            format!("cannot reach AllStar Nexus at {url} (is it running? is --url right?)")
        })?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("{url} did not answer with JSON (is --url right?)"))?;
        if !status.is_success() {
            let why = body.get("error").and_then(Value::as_str).unwrap_or("");
            let hint = if status.as_u16() == 401 || status.as_u16() == 403 {
                " (give a token with --token or NEXUS_TOKEN)"
            } else {
                ""
            };
            bail!("{url}: {status} {}{hint}", clean(why));
        }
        Ok(body)
    }

    /// Health and nodes, read once.
    pub async fn fetch(&self) -> anyhow::Result<View> {
        let health: Health = serde_json::from_value(self.get("/api/health").await?)
            .context("unexpected /api/health answer")?;
        let nodes = self.get("/api/nodes").await?;
        let seq = nodes.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let nodes: Vec<Node> = nodes
            .get("nodes")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .context("unexpected /api/nodes answer")?
            .unwrap_or_default();
        Ok(View {
            base: self.base.clone(),
            health,
            nodes,
            seq,
            epoch: None,
        })
    }

    /// The WebSocket URL, resuming after `view` when it has seen a change.
    fn ws_url(&self, view: &View) -> anyhow::Result<String> {
        let rest = if let Some(r) = self.base.strip_prefix("http://") {
            format!("ws://{r}/ws")
        } else {
            bail!(
                "--watch needs a plain http:// URL (for a TLS proxy, run status on the node against its listen address)"
            );
        };
        Ok(match &view.epoch {
            Some(e) if view.seq > 0 => format!("{rest}?since={}&epoch={e}", view.seq),
            _ => rest,
        })
    }

    /// Draws the table, then redraws it as changes arrive, until `stop`. A lost stream is
    /// reopened (resuming where it left off) after a short wait.
    pub async fn watch(
        &self,
        mut draw: impl FnMut(&str),
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut view = self.fetch().await?;
        draw(&view.render());
        let mut wait = Duration::from_millis(500);
        loop {
            let result = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                r = self.stream(&mut view, &mut draw, &stop) => r,
            };
            if stop.is_cancelled() {
                return Ok(());
            }
            let why = match result {
                Ok(()) => "the daemon closed the stream".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            view.health.status = "reconnecting".into();
            view.health.summary = format!(
                "{why}; retrying in {}",
                short_duration(wait.as_secs().max(1))
            );
            draw(&view.render());
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(10));
            if let Ok(fresh) = self.fetch().await {
                let epoch = view.epoch.take();
                view = fresh;
                view.epoch = epoch;
                draw(&view.render());
                wait = Duration::from_millis(500);
            }
        }
    }

    /// One WebSocket session: apply messages, redraw at most every [`REDRAW_EVERY`].
    async fn stream(
        &self,
        view: &mut View,
        draw: &mut impl FnMut(&str),
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut request = self.ws_url(view)?.into_client_request()?;
        if let Some(t) = &self.token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .context("cannot open the WebSocket stream")?;
        let mut dirty = false;
        let mut tick = tokio::time::interval(REDRAW_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    if dirty {
                        draw(&view.render());
                        dirty = false;
                    }
                }
                msg = ws.next() => match msg {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(t))) => {
                        let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                        if v.get("type").and_then(Value::as_str) == Some("heartbeat") {
                            // Refresh the AMI status times now and then.
                            let fresh = self.get("/api/health").await.ok()
                                .and_then(|h| serde_json::from_value::<Health>(h).ok());
                            if let Some(h) = fresh {
                                view.health = h;
                                dirty = true;
                            }
                        }
                        dirty |= view.apply(&v);
                    }
                    Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

/// `allstar-nexus status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let token = args
        .token
        .or_else(|| std::env::var(TOKEN_ENV).ok())
        .filter(|t| !t.is_empty());
    let client = Client::new(&args.url, token)?;
    if !args.watch {
        print!("{}", client.fetch().await?.render());
        return Ok(());
    }
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        crate::daemon::shutdown_signal().await;
        on_signal.cancel();
    });
    client
        .watch(
            |frame| {
                let mut out = std::io::stdout().lock();
                // Clear and home on a terminal; a separator line in a file or pipe.
                let _ = if tty {
                    write!(out, "\x1b[H\x1b[2J{frame}")
                } else {
                    write!(out, "----\n{frame}")
                };
                let _ = out.flush();
            },
            stop,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view() -> View {
        let nodes = json!([{
            "node_id": "1999", "server": "default", "rx_keyed": false, "tx_keyed": false,
            "stale": false, "future_field": 1,
            "links": [{"node": "2000", "callsign": "W1AW", "mode": "T", "direction": "OUT",
                       "state": "ESTABLISHED", "elapsed": "01:02:03", "keyed": false,
                       "ip": "192.0.2.4", "last_keyed_seconds": 75}]
        }]);
        View {
            base: "http://127.0.0.1:8080".into(),
            health: Health {
                status: "ok".into(),
                summary: "all 1 AMI server(s) connected".into(),
                version: "0.1.0".into(),
                servers: vec![Server {
                    name: "default".into(),
                    host: "127.0.0.1:5038".into(),
                    connected: true,
                    state: "connected".into(),
                    for_seconds: Some(3725),
                    last_error: None,
                }],
            },
            nodes: serde_json::from_value(nodes).expect("nodes"),
            seq: 10,
            epoch: None,
        }
    }

    #[test]
    fn renders_nodes_links_and_ami() {
        let t = view().render();
        assert!(t.contains("NODE 1999"), "{t}");
        assert!(t.contains("TX idle"), "{t}");
        assert!(t.contains("connected for 1h 2m"), "{t}");
        let link = t.lines().find(|l| l.contains("2000")).expect("link row");
        for want in [
            "W1AW",
            "transceive",
            "OUT",
            "01:02:03",
            "1m 15s ago",
            "192.0.2.4",
        ] {
            assert!(link.contains(want), "{want} in {link}");
        }
    }

    #[test]
    fn changes_apply_like_the_api_says() {
        let mut v = view();
        let key = json!({"type": "event", "seq": 11, "event": {"seq": 11, "kind": "link_keyed",
            "server": "default", "node": "1999",
            "link": {"node": "2000", "mode": "T", "keyed": true, "elapsed": "01:02:04"}}});
        assert!(v.apply(&key));
        assert!(v.nodes[0].links[0].keyed);
        assert_eq!(v.seq, 11);
        let tx = json!({"type": "event", "seq": 12, "event": {"kind": "tx_keyed", "server": "default", "node": "1999"}});
        assert!(v.apply(&tx));
        assert!(v.render().contains("TX KEYED"));
        let new = json!({"type": "event", "seq": 13, "event": {"kind": "link_connected",
            "server": "default", "node": "1999", "link": {"node": "2001", "elapsed": "00:00:00"}}});
        assert!(v.apply(&new));
        assert_eq!(v.nodes[0].links.len(), 2);
        let gone = json!({"type": "event", "seq": 14, "event": {"kind": "link_disconnected",
            "server": "default", "node": "1999", "link": {"node": "2000"}}});
        assert!(v.apply(&gone));
        assert_eq!(v.nodes[0].links.len(), 1);
        let down = json!({"type": "event", "seq": 15, "event": {"kind": "ami_disconnected",
            "server": "default", "error": "connection refused"}});
        assert!(v.apply(&down));
        let t = v.render();
        assert!(
            t.contains("STALE") && t.contains("connection refused"),
            "{t}"
        );
        assert!(!v.apply(&json!({"type": "heartbeat", "seq": 15})));
        let snap = json!({"type": "snapshot", "seq": 40, "epoch": "e1", "nodes": []});
        assert!(v.apply(&snap));
        assert!(v.nodes.is_empty());
        assert_eq!((v.seq, v.epoch.as_deref()), (40, Some("e1")));
    }

    #[test]
    fn terminal_escapes_from_the_network_are_neutralised() {
        let mut v = view();
        v.nodes[0].links[0].callsign = Some("\x1b[2J\x1b]0;pwned\x07".into());
        v.health.summary = "line\r\nbreak".into();
        let t = v.render();
        assert!(
            !t.contains('\x1b') && !t.contains('\x07') && !t.contains('\r'),
            "{t:?}"
        );
    }

    #[test]
    fn durations_and_modes_read_well() {
        assert_eq!(short_duration(5), "5s");
        assert_eq!(short_duration(125), "2m 5s");
        assert_eq!(short_duration(7322), "2h 2m");
        assert_eq!(short_duration(90_000), "1d 1h");
        assert_eq!(mode_name(Some("R")), "monitor");
        assert_eq!(mode_name(None), "-");
    }

    #[test]
    fn bad_urls_and_tokens_are_refused() {
        assert!(Client::new("127.0.0.1:8080", None).is_err());
        assert!(Client::new("http://x", Some("a\nb".into())).is_err());
        let c = Client::new("https://x/", None).expect("client");
        assert!(c.ws_url(&View::default()).is_err());
        let c = Client::new("http://x/nexus/", None).expect("client");
        let mut v = View::default();
        assert_eq!(c.ws_url(&v).expect("url"), "ws://x/nexus/ws");
        v.seq = 5;
        v.epoch = Some("e".into());
        assert_eq!(
            c.ws_url(&v).expect("url"),
            "ws://x/nexus/ws?since=5&epoch=e"
        );
    }
}
