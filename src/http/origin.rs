//! The browser `Origin` check for WebSocket handshakes and state-changing requests, and
//! the `Host` check against DNS rebinding ([`host_allowed`]).
//!
//! A page on another site can open a WebSocket to this daemon from a visitor's browser
//! (cross-site WebSocket hijacking) and can send simple cross-site POSTs. Browsers always
//! send `Origin` on both, so a request that carries one must come from the same host as
//! the one it addressed (`Host`, or `X-Forwarded-Host` set by a reverse proxy — a browser
//! page cannot set either), or from an origin listed in `websocket.allowed_origins`
//! (`"*"` allows any). Requests without `Origin` (curl, scripts, Prometheus) are not
//! browser requests and pass.

/// Whether a request with this `Origin` may proceed.
pub fn allowed(
    origin: &str,
    host: Option<&str>,
    forwarded_host: Option<&str>,
    allowed: &[String],
) -> bool {
    let origin = origin.trim();
    if allowed.iter().any(|a| a.trim() == "*") {
        return true;
    }
    let norm = |s: &str| s.trim().trim_end_matches('/').to_ascii_lowercase();
    let o = norm(origin);
    if allowed.iter().any(|a| norm(a) == o) {
        return true;
    }
    let Some((scheme, o_host, o_port)) = parse_origin(&o) else {
        // `null` (sandboxed frames, file://) and anything unreadable.
        return false;
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    let o_port = o_port.unwrap_or(default_port);
    [host, forwarded_host.and_then(|f| f.split(',').next())]
        .into_iter()
        .flatten()
        .filter_map(|h| split_authority(&h.trim().to_ascii_lowercase()))
        .any(|(h, p)| h == o_host && p.unwrap_or(default_port) == o_port)
}

/// Whether a request's `Host` names this daemon (DNS rebinding protection): an IP
/// address (the listen address, or any other — a rebinding page always uses a name),
/// `localhost` or a `*.localhost` name, or a name in `http.allowed_hosts` (an entry with a
/// port must match it; `*.example.org` matches subdomains; `"*"` allows any host).
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let Some((name, port)) = split_authority(&host.trim().to_ascii_lowercase()) else {
        return false;
    };
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
    {
        return true;
    }
    allowed.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        if entry == "*" {
            return true;
        }
        let Some((e_name, e_port)) = split_authority(&entry) else {
            return false;
        };
        let name_ok = match e_name.strip_prefix("*.") {
            Some(domain) => name.ends_with(&format!(".{domain}")),
            None => e_name == name,
        };
        name_ok && e_port.is_none_or(|p| Some(p) == port)
    })
}

/// `scheme://host[:port]` → (scheme, host, port).
fn parse_origin(o: &str) -> Option<(&str, String, Option<u16>)> {
    let (scheme, rest) = o.split_once("://")?;
    if !(scheme == "http" || scheme == "https") || rest.contains('/') {
        return None;
    }
    let (h, p) = split_authority(rest)?;
    Some((scheme, h, p))
}

/// `host[:port]` or `[v6]:port` → (host, port).
fn split_authority(a: &str) -> Option<(String, Option<u16>)> {
    if a.is_empty() || a.contains('@') {
        return None;
    }
    if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((format!("[{h}]"), port));
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => {
            Some((h.to_owned(), Some(p.parse().ok()?)))
        }
        Some(_) => None,
        None => Some((a.to_owned(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(origin: &str, host: &str) -> bool {
        allowed(origin, Some(host), None, &[])
    }

    #[test]
    fn same_host_passes() {
        assert!(ok("http://localhost:8080", "localhost:8080"));
        assert!(ok("http://LocalHost:8080", "localhost:8080"));
        assert!(ok("https://radio.example.org", "radio.example.org"));
        assert!(ok("https://radio.example.org", "radio.example.org:443"));
        assert!(ok("http://radio.example.org:80", "radio.example.org"));
        assert!(ok("http://[::1]:8080", "[::1]:8080"));
    }

    #[test]
    fn other_hosts_and_ports_fail() {
        assert!(!ok("http://evil.example.com", "localhost:8080"));
        assert!(!ok("http://localhost:9999", "localhost:8080"));
        assert!(!ok("https://radio.example.org", "radio.example.org:8080"));
        assert!(!ok("null", "localhost:8080"));
        assert!(!ok("file://", "localhost"));
        assert!(!ok("http://localhost.evil.com", "localhost"));
        assert!(!ok("http://user@localhost", "localhost"));
        assert!(!allowed("http://localhost:8080", None, None, &[]));
    }

    #[test]
    fn hosts_must_name_this_daemon() {
        let none: &[String] = &[];
        for ok in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "localhost",
            "LOCALHOST:80",
            "a.localhost",
            "192.168.1.5",
            "10.0.0.1:8080",
        ] {
            assert!(host_allowed(ok, none), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.com",
            "",
            "user@localhost",
        ] {
            assert!(!host_allowed(bad, none), "{bad}");
        }
        let list = vec![
            "nexus.lan".to_owned(),
            "*.radio.example".to_owned(),
            "pi:8080".to_owned(),
        ];
        assert!(host_allowed("nexus.lan:8080", &list));
        assert!(host_allowed("a.radio.example", &list));
        assert!(!host_allowed("radio.example.evil", &list));
        assert!(host_allowed("pi:8080", &list));
        assert!(!host_allowed("pi:9090", &list));
        assert!(host_allowed("anything", &["*".to_owned()]));
    }

    #[test]
    fn configured_origins_and_proxies() {
        let list = vec!["https://dash.example.org/".to_owned()];
        assert!(allowed(
            "https://dash.example.org",
            Some("127.0.0.1:8080"),
            None,
            &list
        ));
        assert!(!allowed(
            "https://other.example.org",
            Some("127.0.0.1:8080"),
            None,
            &list
        ));
        assert!(allowed(
            "https://anything.example",
            Some("x"),
            None,
            &["*".to_owned()]
        ));
        assert!(allowed(
            "https://radio.example.org",
            Some("127.0.0.1:8080"),
            Some("radio.example.org"),
            &[]
        ));
    }
}
