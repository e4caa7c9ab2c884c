//! The browser `Origin` check for WebSocket handshakes and state-changing requests.
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
