// AllStar Nexus dashboard: one card per node, kept live from the /ws change stream.
// Plain JavaScript, no build step, no library. Every text from the API, astdb or AMI is
// inserted with textContent (never as HTML). See docs/dashboard.md.
"use strict";

(function () {
  const MODES = { T: "Transceive", R: "Monitor", L: "Local monitor", C: "Connecting" };
  const DIRS = { IN: "In", OUT: "Out" };
  const STATES = { ESTABLISHED: "Established", CONNECTING: "Connecting" };

  const S = {
    meta: null,            // /api/dashboard
    nodes: new Map(),      // node_id -> NodeView (links stamped with `_at`, receipt time)
    keyedSince: new Map(), // "node" or "node/link" -> ms (client clock) the key started
    seq: null,
    epoch: null,
    started: null,         // /api/health `started`: a change means the daemon restarted
    health: null,
    session: null,         // /api/session, or null when absent (read-only)
    alerts: [],
    voter: new Map(),
    amiDown: new Map(),    // server -> banner text, from the stream (ami_* changes, stale nodes)
    activity: new Map(),
    ws: null,
    retry: 0,
    everConnected: false,
  };

  // ---- small helpers -------------------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  const $ = (id) => document.getElementById(id);
  const now = () => Date.now();

  function dur(secs) {
    secs = Math.max(0, Math.floor(secs));
    const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
    const m = Math.floor(secs / 60) % 60, s = secs % 60;
    const pad = (n) => String(n).padStart(2, "0");
    if (d > 0) return `${d}d ${pad(h)}:${pad(m)}:${pad(s)}`;
    return `${pad(h)}:${pad(m)}:${pad(s)}`;
  }
  function ago(secs) {
    if (secs === null || secs === undefined) return "never";
    secs = Math.max(0, Math.floor(secs));
    if (secs < 60) return `${secs} s ago`;
    if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
    if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
    return `${Math.floor(secs / 86400)} d ago`;
  }
  function sentence(t) { return /[.?!]$/.test(t) ? t : `${t}.`; }
  function clock(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  }

  async function getJson(path) {
    const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    let body = null;
    try { body = await r.json(); } catch (_) { body = null; }
    return { status: r.status, ok: r.ok, body };
  }

  // ---- the model -------------------------------------------------------------------------

  function stampLink(l, at) { l._at = at; return l; }

  function setNodes(list) {
    const at = now();
    S.nodes.clear();
    for (const n of list || []) putNode(n, at);
  }

  // One node as REST or the snapshot shows it (replacing what was known of it).
  function putNode(n, at) {
    for (const l of n.links || []) {
      stampLink(l, at);
      const k = `${n.node_id}/${l.node}`;
      if (l.keyed) {
        if (!S.keyedSince.has(k)) S.keyedSince.set(k, at - 1000 * (l.last_keyed_seconds || 0));
      } else S.keyedSince.delete(k);
    }
    for (const f of ["rx", "tx"]) {
      const k = `${n.node_id}#${f}`;
      if (n[`${f}_keyed`]) { if (!S.keyedSince.has(k)) S.keyedSince.set(k, at); } else S.keyedSince.delete(k);
    }
    S.nodes.set(n.node_id, n);
  }

  // Nodes to read again from REST: a node the snapshot did not have (a remote node that
  // appeared since), or one whose whole state was replaced (`node_updated` with `state`).
  // Asked together, once per 50 ms; many at once read the whole list.
  const refetch = { ids: new Set(), timer: null };

  function refetchNode(id) {
    refetch.ids.add(id);
    if (!refetch.timer) refetch.timer = setTimeout(flushRefetch, 50);
  }

  async function flushRefetch() {
    refetch.timer = null;
    const ids = Array.from(refetch.ids);
    refetch.ids.clear();
    const got = [];
    try {
      if (ids.length > 20) {
        const r = await getJson("/api/nodes");
        const want = new Set(ids);
        if (r.ok && r.body && Array.isArray(r.body.nodes)) got.push(...r.body.nodes.filter((n) => want.has(n.node_id)));
      } else {
        for (const id of ids) {
          const r = await getJson(`/api/nodes/${encodeURIComponent(id)}`);
          if (r.ok && r.body && r.body.node_id === id) got.push(r.body);
        }
      }
    } catch (_) { /* offline: the next snapshot brings them */ }
    if (!got.length) return;
    const at = now();
    for (const n of got) putNode(n, at);
    renderAll();
  }

  function applyEvent(ev) {
    const n = ev.node ? S.nodes.get(ev.node) : null;
    const at = now();
    if (ev.node && !n) { refetchNode(ev.node); return; } // new since the snapshot
    switch (ev.kind) {
      case "link_connected": case "link_updated": case "link_keyed": case "link_unkeyed": {
        if (!n || !ev.link) return;
        const l = stampLink(ev.link, at);
        const i = n.links.findIndex((x) => x.node === l.node);
        if (i >= 0) n.links[i] = l; else n.links.unshift(l);
        const k = `${n.node_id}/${l.node}`;
        if (l.keyed) { if (!S.keyedSince.has(k)) S.keyedSince.set(k, at); } else S.keyedSince.delete(k);
        break;
      }
      case "link_disconnected":
        if (!n || !ev.link) return;
        n.links = n.links.filter((x) => x.node !== ev.link.node);
        S.keyedSince.delete(`${n.node_id}/${ev.link.node}`);
        break;
      case "rx_keyed": case "rx_unkeyed": case "tx_keyed": case "tx_unkeyed": {
        if (!n) return;
        const f = ev.kind.slice(0, 2), on = ev.kind.endsWith("_keyed");
        n[`${f}_keyed`] = on;
        const k = `${n.node_id}#${f}`;
        if (on) S.keyedSince.set(k, at); else S.keyedSince.delete(k);
        break;
      }
      case "node_updated":
        // `state`: replaced as a whole (a remote node turned stale, or moved): read it again.
        if ((ev.fields || []).includes("state")) refetchNode(n.node_id);
        if ((ev.fields || []).includes("stale")) n.stale = false;
        break;
      case "ami_connected": case "ami_disconnected":
        // This daemon's own sessions: remote nodes (`origin`) have their daemon's.
        for (const m of S.nodes.values()) if (m.server === ev.server && !m.origin) m.stale = ev.kind === "ami_disconnected";
        if (ev.kind === "ami_disconnected") S.amiDown.set(ev.server, downText(ev.server, ev.error));
        else S.amiDown.delete(ev.server);
        renderAmiBanner();
        refreshHealth();
        break;
      default:
        return;
    }
    if (n) renderNode(n.node_id);
  }

  // ---- the WebSocket ---------------------------------------------------------------------

  async function connect() {
    // A restarted daemon numbers its changes anew: resume only within the same run.
    // No socket before the daemon has answered: the answer tells whether it restarted.
    const h = await refreshHealth();
    if (!h) { scheduleReconnect(); return; }
    if (S.started && h.started !== S.started) { S.seq = null; S.epoch = null; }
    S.started = h.started;
    if (!S.meta) await loadMeta();
    const q = [];
    if (S.seq !== null) q.push(`since=${S.seq}`);
    if (S.seq !== null && S.epoch) q.push(`epoch=${encodeURIComponent(S.epoch)}`);
    const proto = location.protocol === "https:" ? "wss" : "ws";
    let ws;
    try {
      ws = new WebSocket(`${proto}://${location.host}/ws${q.length ? "?" + q.join("&") : ""}`);
    } catch (_) { scheduleReconnect(); return; }
    S.ws = ws;
    ws.onopen = () => {
      S.retry = 0;
      S.everConnected = true;
      setConnBanner(null);
      setLive(true);
      loadSide();
    };
    ws.onmessage = (m) => {
      let msg;
      try { msg = JSON.parse(m.data); } catch (_) { return; }
      if (typeof msg.epoch === "string") S.epoch = msg.epoch;
      if (msg.type === "snapshot") {
        setNodes(msg.nodes);
        S.amiDown.clear();
        for (const n of S.nodes.values()) if (n.stale && !n.origin) S.amiDown.set(n.server, downText(n.server, null));
        S.seq = msg.seq;
        renderAll();
      } else if (msg.type === "event" && msg.event) {
        S.seq = msg.seq;
        applyEvent(msg.event);
      } else if (msg.type === "alert" && msg.alert) {
        addAlert(msg.alert);
      } else if (typeof msg.seq === "number") {
        S.seq = msg.seq;
      }
    };
    ws.onclose = () => {
      if (S.ws !== ws) return;
      S.ws = null;
      setLive(false);
      setConnBanner("Connection to the AllStar Nexus server lost — reconnecting…");
      // Refused before it ever opened: perhaps reads need a login (anonymous_read: false).
      if (!S.everConnected && S.retry % 4 === 0) loadSession();
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    const delay = Math.min(5000, 250 * Math.pow(2, S.retry));
    S.retry += 1;
    setTimeout(connect, delay);
  }

  function setLive(up) {
    const live = $("live");
    live.textContent = up ? "live" : "offline";
    live.classList.toggle("down", !up);
  }

  function setConnBanner(text) {
    const b = $("conn-banner");
    b.textContent = text || "";
    b.hidden = !text;
  }

  // ---- REST side data ----------------------------------------------------------------------

  async function loadMeta() {
    try {
      const r = await getJson("/api/dashboard");
      if (r.ok && r.body) {
        S.meta = r.body;
        $("version").textContent = `AllStar Nexus ${r.body.version || ""}`;
      }
    } catch (_) { /* offline: keep the old one */ }
  }

  async function refreshHealth() {
    try {
      const r = await getJson("/api/health");
      if (!r.ok || !r.body) return null;
      S.health = r.body;
      renderAmiBanner();
      renderAll();
      return r.body;
    } catch (_) { return null; }
  }

  function downText(server, error) {
    const host = serverHost(server);
    return `Asterisk ${host ? "at " + host : server} unreachable since ${clock(now())}` +
      (error ? ` — ${sentence(error)}` : ".") + " Retrying automatically.";
  }

  function serverHost(name) {
    const s = S.health && (S.health.servers || []).find((x) => x.name === name);
    return s ? s.host : null;
  }

  function renderAmiBanner() {
    const b = $("ami-banner");
    const h = S.health;
    if (h && h.ami_enabled === false) { b.hidden = true; b.textContent = ""; return; }
    const down = h ? (h.servers || []).filter((s) => !s.connected) : [];
    // The stream may know first (health is read right after): show either.
    const extra = Array.from(S.amiDown).filter(([name]) => !down.some((s) => s.name === name)).map(([, t]) => t);
    if (!down.length && !extra.length) { b.hidden = true; b.textContent = ""; return; }
    b.textContent = extra.concat(down.map((s) => {
      if (s.state === "connecting") return `Connecting to Asterisk at ${s.host}…`;
      const since = s.since ? ` since ${clock(Date.parse(s.since))}` : "";
      return `Asterisk at ${s.host} unreachable${since}` + (s.last_error ? ` — ${sentence(s.last_error)}` : ".") +
        ` Retrying automatically (attempt ${s.reconnect_attempts || 0}).`;
    })).join(" ");
    b.hidden = false;
  }

  async function loadSide() {
    loadMeta().then(renderAll);
    loadAlerts();
    loadSession();
    loadVoters();
    loadActivity();
  }

  async function loadAlerts() {
    try {
      const r = await getJson("/api/alerts?limit=20");
      if (r.ok && r.body && Array.isArray(r.body.alerts)) {
        S.alerts = r.body.alerts.slice().reverse();
        renderAlerts();
      }
    } catch (_) { /* keep */ }
  }

  function addAlert(a) {
    if (S.alerts.some((x) => x.id === a.id)) return;
    S.alerts.unshift(a);
    S.alerts.length = Math.min(S.alerts.length, 50);
    renderAlerts();
  }

  function renderAlerts() {
    const list = $("alerts");
    list.replaceChildren();
    for (const a of S.alerts.slice(0, 20)) {
      const li = el("li", `alert sev-${String(a.severity || "info").replace(/[^a-z]/g, "")}`);
      li.append(el("span", "sev", String(a.severity || "info").toUpperCase()));
      li.append(el("time", "when", a.time_ms ? clock(a.time_ms) : ""));
      li.append(el("strong", "title", a.title || ""));
      li.append(el("span", "msg", a.message || ""));
      list.append(li);
    }
    $("alerts-empty").hidden = S.alerts.length > 0;
  }

  async function loadVoters() {
    for (const id of localOrder()) {
      try {
        const r = await getJson(`/api/nodes/${encodeURIComponent(id)}/voter`);
        if (r.ok && r.body && Array.isArray(r.body.receivers)) S.voter.set(id, r.body);
        else S.voter.delete(id);
      } catch (_) { /* keep */ }
      renderNode(id);
    }
  }

  async function loadActivity() {
    const until = now(), since = until - 24 * 3600 * 1000;
    for (const id of localOrder()) {
      const q = `node=${encodeURIComponent(id)}&since=${since}&until=${until}`;
      try {
        const [a, t] = await Promise.all([
          getJson(`/api/stats/activity?${q}&bucket=1h`),
          getJson(`/api/stats/talkers?${q}`),
        ]);
        if (a.ok && a.body && Array.isArray(a.body.buckets)) {
          S.activity.set(id, { buckets: a.body.buckets, talkers: t.ok && t.body ? t.body.talkers || [] : [] });
        } else S.activity.delete(id); // 404 (no history here) or 503 (disabled): hidden
      } catch (_) { S.activity.delete(id); }
      renderNode(id);
    }
  }

  // ---- session and controls ---------------------------------------------------------------

  async function loadSession() {
    try {
      const r = await getJson("/api/session");
      S.session = r.ok && r.body && typeof r.body === "object" ? r.body : null;
    } catch (_) { S.session = null; }
    renderAccount();
    renderAll();
  }

  function canControl(nodeId) {
    if (isRemote(nodeId)) return false; // refused (409): control it on its own daemon
    const s = S.session;
    if (!s || !s.authenticated || !s.control_enabled) return false;
    if (s.role !== "control" && s.role !== "admin") return false;
    return !Array.isArray(s.nodes) || s.nodes.includes(nodeId);
  }

  function renderAccount() {
    const box = $("account");
    box.replaceChildren();
    const s = S.session;
    if (!s) return; // no control API here: read-only, nothing to show
    if (s.authenticated) {
      box.append(el("span", "who", `${s.name || "signed in"} (${s.role || "read"})`));
      if (s.csrf_token) {
        const out = el("button", "btn-logout", "Log out");
        out.type = "button";
        out.addEventListener("click", logout);
        box.append(out);
      }
    } else if (s.login_available) {
      const b = el("button", "btn-login", "Log in");
      b.type = "button";
      b.addEventListener("click", () => { $("login-panel").hidden = false; $("login-form").elements.name.focus(); });
      box.append(b);
    }
  }

  async function login(e) {
    e.preventDefault();
    const f = e.target, out = $("login-result");
    out.textContent = "Logging in…";
    try {
      const r = await fetch("/api/login", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: f.elements.name.value, password: f.elements.password.value }),
      });
      const body = await r.json().catch(() => ({}));
      if (r.ok) {
        f.reset();
        out.textContent = "";
        $("login-panel").hidden = true;
        await loadSession();
      } else if (r.status === 429) {
        out.textContent = `Too many attempts: try again in ${r.headers.get("Retry-After") || "a few"} s.`;
      } else out.textContent = body.error || `Login failed (${r.status}).`;
    } catch (_) { out.textContent = "Login failed: the server cannot be reached."; }
  }

  async function logout() {
    await send("POST", "/api/logout", null).catch(() => null);
    await loadSession();
  }

  async function send(method, path, body) {
    const headers = { "Content-Type": "application/json" };
    if (S.session && S.session.csrf_token) headers["X-CSRF-Token"] = S.session.csrf_token;
    const r = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === null ? undefined : JSON.stringify(body),
    });
    const json = await r.json().catch(() => ({}));
    return { status: r.status, ok: r.ok, body: json, retry: r.headers.get("Retry-After") };
  }

  function reportResult(nodeId, r, what) {
    const out = document.querySelector(`[data-node="${CSS.escape(nodeId)}"] .ctl-result`);
    if (!out) return;
    if (r.ok) {
      const res = r.body.result || "done";
      out.textContent = `${what}: ${res}` + (r.body.detail ? ` — ${r.body.detail}` : "");
      out.dataset.result = res;
    } else {
      out.textContent = `${what} failed: ${r.body.error || "HTTP " + r.status}` +
        (r.retry ? ` (try again in ${r.retry} s)` : "");
      out.dataset.result = "error";
    }
  }

  async function doConnect(nodeId, form) {
    const target = form.elements.target.value.trim();
    const mode = form.elements.mode.value;
    const permanent = form.elements.permanent.checked;
    if (!/^[0-9]{1,7}$/.test(target)) { reportResult(nodeId, { ok: false, body: { error: "enter a node number" }, status: 400 }, "Connect"); return; }
    if (!window.confirm(`Connect node ${nodeId} to ${target} (${MODES[{ transceive: "T", monitor: "R", local_monitor: "L" }[mode]]}${permanent ? ", permanent" : ""})?`)) return;
    const r = await send("POST", `/api/nodes/${encodeURIComponent(nodeId)}/links`, { target, mode, permanent })
      .catch(() => ({ ok: false, status: 0, body: { error: "the server cannot be reached" } }));
    reportResult(nodeId, r, `Connect ${target}`);
  }

  async function doDisconnect(nodeId, target) {
    if (!window.confirm(`Disconnect ${target} from node ${nodeId}?`)) return;
    const r = await send("DELETE", `/api/nodes/${encodeURIComponent(nodeId)}/links/${encodeURIComponent(target)}`, null)
      .catch(() => ({ ok: false, status: 0, body: { error: "the server cannot be reached" } }));
    reportResult(nodeId, r, `Disconnect ${target}`);
  }

  // ---- rendering ----------------------------------------------------------------------------

  // Configured nodes in configuration order, then the others (remote nodes, `origin`) by
  // origin and number.
  function nodeOrder() {
    const conf = S.meta && Array.isArray(S.meta.nodes) ? S.meta.nodes.map((n) => n.node_id) : [];
    const known = new Set(conf);
    const rest = Array.from(S.nodes.values()).filter((n) => !known.has(n.node_id));
    rest.sort((a, b) => String(a.origin || "").localeCompare(String(b.origin || "")) ||
      String(a.node_id).localeCompare(String(b.node_id), undefined, { numeric: true }));
    return conf.concat(rest.map((n) => n.node_id));
  }

  function isRemote(id) {
    const n = S.nodes.get(id);
    return !!(n && n.origin);
  }

  // The nodes this daemon watches itself (voter and history are theirs only).
  function localOrder() { return nodeOrder().filter((id) => !isRemote(id)); }

  function metaOf(id) {
    return (S.meta && (S.meta.nodes || []).find((n) => n.node_id === id)) || { node_id: id };
  }

  function renderAll() {
    const main = $("nodes");
    const order = nodeOrder();
    $("empty").hidden = order.length > 0;
    for (const id of order) {
      let card = main.querySelector(`:scope > [data-node="${CSS.escape(id)}"]`);
      if (!card) { card = buildCard(id); main.append(card); } else main.append(card); // keeps order
    }
    for (const card of main.querySelectorAll(":scope > .card")) {
      if (!order.includes(card.dataset.node)) card.remove();
    }
    for (const id of order) renderNode(id);
    renderTitle();
  }

  function buildCard(id) {
    const card = el("section", "card");
    card.dataset.node = id;
    card.setAttribute("aria-label", `Node ${id}`);
    const head = el("header", "card-head");
    head.append(el("h2", "node-id", id), el("span", "callsign"), el("span", "origin"), el("span", "ami-status"));
    card.append(head, el("p", "desc"), el("p", "talking"), el("div", "controls"));
    const wrap = el("div", "links-wrap");
    const table = el("table", "links");
    const cap = el("caption", "link-count");
    const thead = el("thead");
    const tr = el("tr");
    for (const h of ["Node", "Name", "IP", "Dir.", "Mode", "State", "Connected", "Last heard", "Keyups", "Talk", ""]) {
      const th = el("th", null, h); th.scope = "col"; tr.append(th);
    }
    thead.append(tr);
    table.append(cap, thead, el("tbody"));
    wrap.append(table);
    card.append(wrap, el("div", "voter"), el("div", "activity"));
    return card;
  }

  function renderNode(id) {
    const card = document.querySelector(`#nodes > [data-node="${CSS.escape(id)}"]`);
    if (!card) return;
    const n = S.nodes.get(id), m = metaOf(id);
    card.querySelector(".callsign").textContent = m.callsign || "";
    const desc = [m.description, m.location].filter(Boolean).join(" · ");
    card.querySelector(".desc").textContent = desc;
    card.querySelector(".desc").hidden = !desc;
    const status = card.querySelector(".ami-status");
    const server = n ? n.server : m.server;
    const sh = S.health && (S.health.servers || []).find((s) => s.name === server);
    const up = n ? !n.stale : sh ? sh.connected : false;
    const origin = n && n.origin ? String(n.origin) : null;
    const from = card.querySelector(".origin");
    from.textContent = origin ? `from ${origin}` : "";
    from.title = origin ? `Shown from daemon ${origin} through the broker; controlled there.` : "";
    from.hidden = !origin;
    card.classList.toggle("remote", !!origin);
    if (origin) status.textContent = up ? "live through the broker" : `${origin} offline or its AMI down — data may be out of date`;
    else status.textContent = !n ? "waiting for data" : up ? `AMI connected${sh ? " (" + sh.host + ")" : ""}` : "AMI down — data may be out of date";
    status.classList.toggle("down", !up);
    card.classList.toggle("stale", !!(n && n.stale));
    renderTalking(card, n);
    renderControls(card, id);
    renderLinks(card, n);
    renderVoter(card, id);
    renderActivity(card, id);
    renderTitle();
  }

  function talkers(n) {
    const out = [];
    if (!n) return out;
    if (n.rx_keyed) out.push({ who: "Local receiver (RX)", key: `${n.node_id}#rx` });
    for (const l of n.links) if (l.keyed) out.push({ who: `${l.node}${l.callsign ? " " + l.callsign : ""}`, key: `${n.node_id}/${l.node}`, link: l.node });
    return out;
  }

  function renderTalking(card, n) {
    const p = card.querySelector(".talking");
    p.replaceChildren();
    const t = talkers(n);
    const tx = n && n.tx_keyed;
    card.classList.toggle("on-air", t.length > 0 || !!tx);
    if (!t.length && !tx) { p.append(el("span", "idle", "Idle: nobody talking")); return; }
    p.append(el("span", "dot", "●"), el("strong", null, "Talking now: "));
    const parts = t.map((x) => `${x.who} for ${dur((now() - (S.keyedSince.get(x.key) || now())) / 1000)}`);
    if (tx) parts.push(`transmitting (TX) for ${dur((now() - (S.keyedSince.get(`${n.node_id}#tx`) || now())) / 1000)}`);
    p.append(el("span", "who", parts.join(", ")));
  }

  function renderControls(card, id) {
    const box = card.querySelector(".controls");
    const allowed = canControl(id);
    if (!allowed) { box.replaceChildren(); box.hidden = true; return; }
    box.hidden = false;
    if (box.querySelector("form")) return; // keep what the user is typing
    const f = el("form", "connect-form");
    f.setAttribute("aria-label", `Connect node ${id}`);
    const target = el("input"); target.name = "target"; target.inputMode = "numeric"; target.placeholder = "node number"; target.required = true;
    target.setAttribute("aria-label", "Target node");
    const mode = el("select"); mode.name = "mode"; mode.setAttribute("aria-label", "Mode");
    for (const [v, t] of [["transceive", "Transceive"], ["monitor", "Monitor"], ["local_monitor", "Local monitor"]]) {
      const o = el("option", null, t); o.value = v; mode.append(o);
    }
    const perm = el("input"); perm.type = "checkbox"; perm.name = "permanent";
    const pl = el("label", "perm"); pl.append(perm, document.createTextNode(" permanent"));
    const b = el("button", "btn-connect", "Connect"); b.type = "submit";
    f.append(target, mode, pl, b);
    f.addEventListener("submit", (e) => { e.preventDefault(); doConnect(id, f); });
    box.replaceChildren(f, el("p", "ctl-result"));
    box.lastChild.setAttribute("role", "status");
  }

  const COLS = ["c-node", "c-name", "c-ip", "c-dir", "c-mode", "c-state", "c-conn", "c-heard", "c-keyups", "c-talk", "c-act"];

  function renderLinks(card, n) {
    const tbody = card.querySelector("tbody");
    const links = n ? n.links : [];
    const seen = new Set();
    for (const l of links) {
      seen.add(l.node);
      let tr = tbody.querySelector(`:scope > tr[data-link="${CSS.escape(l.node)}"]`);
      if (!tr) {
        tr = el("tr");
        tr.dataset.link = l.node;
        const labels = ["Node", "Name", "IP", "Direction", "Mode", "State", "Connected", "Last heard", "Keyups", "Talk time", ""];
        COLS.forEach((c, i) => { const td = el("td", c); td.dataset.label = labels[i]; tr.append(td); });
      }
      tbody.append(tr); // server order: newest first
      fillRow(tr, n.node_id, l);
    }
    for (const tr of Array.from(tbody.children)) if (!seen.has(tr.dataset.link)) tr.remove();
    const count = links.length;
    card.querySelector(".link-count").textContent = `${count} link${count === 1 ? "" : "s"}`;
  }

  function fillRow(tr, nodeId, l) {
    const c = (cls) => tr.querySelector(`.${cls}`);
    tr.classList.toggle("keyed", !!l.keyed);
    c("c-node").textContent = l.node;
    const name = c("c-name");
    name.replaceChildren();
    if (l.callsign) name.append(el("strong", null, l.callsign));
    const d = [l.description, l.location].filter(Boolean).join(", ");
    if (d) name.append(el("span", "sub", d));
    if (!l.callsign && !d) name.append(l.kind === "echolink" ? el("span", "muted", "EchoLink") : el("span", "muted none", "—"));
    c("c-ip").textContent = l.ip || "—";
    c("c-dir").textContent = DIRS[l.direction] || "—";
    c("c-mode").textContent = MODES[l.mode] || (l.mode || "—");
    const st = c("c-state");
    st.replaceChildren(document.createTextNode(STATES[l.state] || l.state || "—"));
    if (l.keyed) st.append(el("span", "badge", "KEYED"));
    const today = l.keyups_today !== undefined;
    c("c-keyups").textContent = String(today ? l.keyups_today : l.keyups);
    c("c-keyups").title = today ? "keyups today" : "keyups since the link connected";
    c("c-talk").textContent = dur(today ? l.talk_seconds_today || 0 : l.keyed_seconds_total || 0);
    tickRow(tr, l);
    const act = c("c-act");
    if (canControl(nodeId)) {
      if (!act.querySelector("button")) {
        const b = el("button", "btn-disconnect", "Disconnect");
        b.type = "button";
        b.setAttribute("aria-label", `Disconnect ${l.node} from ${nodeId}`);
        b.addEventListener("click", () => doDisconnect(nodeId, l.node));
        act.replaceChildren(b);
      }
    } else act.replaceChildren();
  }

  // Connected time and last heard advance on the client between server messages.
  function tickRow(tr, l) {
    const secs = (now() - (l._at || now())) / 1000;
    tr.querySelector(".c-conn").textContent = dur((l.connected_seconds || 0) + secs);
    tr.querySelector(".c-heard").textContent = l.keyed ? "now" :
      ago(l.last_unkeyed_seconds === null || l.last_unkeyed_seconds === undefined ? null : l.last_unkeyed_seconds + secs);
  }

  function renderVoter(card, id) {
    const box = card.querySelector(".voter");
    const v = S.voter.get(id);
    box.replaceChildren();
    box.hidden = !v;
    if (!v) return;
    box.append(el("h3", null, "Voter receivers"));
    const ul = el("ul", "rx-list");
    for (const r of v.receivers) {
      const li = el("li", r.voted ? "voted" : "");
      li.append(el("span", "rx-name", r.name));
      const meter = el("meter"); meter.min = 0; meter.max = 255; meter.value = Number(r.rssi) || 0;
      meter.setAttribute("aria-label", `${r.name} RSSI`);
      li.append(meter, el("span", "rx-rssi", String(r.rssi)));
      if (r.voted) li.append(el("span", "badge", "VOTED"));
      if (Array.isArray(r.flags) && r.flags.length) li.append(el("span", "sub", r.flags.join(", ")));
      ul.append(li);
    }
    box.append(ul);
  }

  function renderActivity(card, id) {
    const box = card.querySelector(".activity");
    const a = S.activity.get(id);
    box.replaceChildren();
    box.hidden = !a;
    if (!a) return;
    box.append(el("h3", null, "Keyups per hour, last 24 h"));
    const chart = el("div", "bars");
    const max = Math.max(1, ...a.buckets.map((b) => b.keyups || 0));
    for (const b of a.buckets.slice(-24)) {
      const bar = el("span", "bar");
      bar.style.height = `${Math.round(100 * (b.keyups || 0) / max)}%`;
      bar.title = `${clock(b.start_ms)}: ${b.keyups || 0} keyups, ${dur(b.talk_seconds || 0)}`;
      chart.append(bar);
    }
    chart.setAttribute("role", "img");
    chart.setAttribute("aria-label", `keyups per hour, at most ${max}`);
    box.append(chart);
    if (a.talkers.length) {
      box.append(el("h3", null, "Top talkers"));
      const ol = el("ol", "talkers");
      for (const t of a.talkers.slice(0, 5)) ol.append(el("li", null, `${t.link}: ${t.keyups} keyups, ${dur(t.talk_seconds || 0)}`));
      box.append(ol);
    }
  }

  function renderTitle() {
    const who = [];
    for (const n of S.nodes.values()) {
      for (const t of talkers(n)) who.push(t.link || `${n.node_id} RX`);
      if (n.tx_keyed && !talkers(n).length) who.push(`${n.node_id} TX`);
    }
    const t = who.length ? `🔴 ${who.join(", ")} — AllStar Nexus` : "AllStar Nexus";
    if (document.title !== t) document.title = t;
  }

  function tick() {
    for (const card of document.querySelectorAll("#nodes > .card")) {
      const n = S.nodes.get(card.dataset.node);
      if (!n) continue;
      for (const l of n.links) {
        const tr = card.querySelector(`tbody > tr[data-link="${CSS.escape(l.node)}"]`);
        if (tr) tickRow(tr, l);
      }
      renderTalking(card, n);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", login);
    $("login-cancel").addEventListener("click", () => { $("login-panel").hidden = true; });
    setInterval(tick, 1000);
    setInterval(() => { if (S.health && S.health.status !== "ok") refreshHealth(); }, 5000);
    setInterval(() => { if (S.ws) { loadVoters(); } }, 15000);
    setInterval(() => { if (S.ws) { loadActivity(); } }, 300000);
    connect();
  });
})();
