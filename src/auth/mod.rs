//! Who is asking: API tokens and browser logins, with roles (`read` < `control` <
//! `admin`) and optional node restrictions (`docs/security.md`).
//!
//! With no `api_tokens` and no `users` configured, authentication is off: reads are open and
//! unmasked (as before this module existed) and link control is impossible. Token secrets
//! are kept only as SHA-256 digests and compared in constant time; passwords are Argon2id
//! hashes. Nothing here ever logs or returns a secret.

pub mod password;
pub mod session;

use std::net::IpAddr;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::config::Config;
pub use crate::config::identity::{AuthConfigError, Role, check_config, sha256, token_digest};
pub use session::{LoginError, LoginOk};

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Authentication is off (no tokens, no users): reads are open.
    Open,
    /// No credential while authentication is on.
    Anonymous,
    /// `Authorization: Bearer` (or `?token=` on the WebSocket handshake).
    Token,
    /// The login cookie; `session` is its id, `csrf` the token state changes must echo.
    Cookie { session: String, csrf: String },
    /// A Lua script (`script:<file name>`).
    Script,
}

impl Via {
    pub fn as_str(&self) -> &'static str {
        match self {
            Via::Open => "open",
            Via::Anonymous => "anonymous",
            Via::Token => "token",
            Via::Cookie { .. } => "cookie",
            Via::Script => "script",
        }
    }
}

/// A caller, as far as it proved itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Token or user name, `script:<file>`, or `anonymous`.
    pub name: String,
    /// `None` for anonymous callers.
    pub role: Option<Role>,
    /// Local nodes it is limited to (`None` = all).
    pub nodes: Option<Vec<String>>,
    pub via: Via,
}

impl Identity {
    /// A caller without a credential.
    pub fn anonymous(auth_enabled: bool) -> Identity {
        Identity {
            name: "anonymous".into(),
            role: None,
            nodes: None,
            via: if auth_enabled {
                Via::Anonymous
            } else {
                Via::Open
            },
        }
    }

    /// A Lua script: it acts for the operator who installed it.
    pub fn script(file: &str) -> Identity {
        Identity {
            name: format!("script:{file}"),
            role: Some(Role::Admin),
            nodes: None,
            via: Via::Script,
        }
    }

    /// Whether it holds at least `role`.
    pub fn has(&self, role: Role) -> bool {
        self.role.is_some_and(|r| r >= role)
    }

    /// Whether it may act on (or read) local node `node`.
    pub fn may_node(&self, node: &str) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == node))
    }

    /// The local nodes it is limited to (`nodes:` of its token or user), if any.
    pub fn limit(&self) -> Option<&[String]> {
        self.nodes.as_deref()
    }

    /// The 403 message for a node outside its `nodes:` limit (`node` names the one asked
    /// for, or `None` for a whole-daemon view such as `/metrics`).
    pub fn limit_refusal(&self, node: Option<&str>) -> String {
        let list = self.limit().unwrap_or_default().join(", ");
        match node {
            Some(n) => format!(
                "{} is limited to node(s) {list} (nodes: in its configuration): node {} is outside that limit",
                self.name,
                crate::observe::clip(n, 40).0
            ),
            None => format!(
                "{} is limited to node(s) {list} (nodes: in its configuration): this is a whole-daemon view, open only to identities without a node limit",
                self.name
            ),
        }
    }

    /// Whether link IP addresses are shown to it unmasked.
    pub fn sees_ips(&self) -> bool {
        matches!(self.via, Via::Open) || self.has(Role::Control)
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `n` random bytes from the operating system, as hex.
pub fn random_hex(n: usize) -> Result<String, String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(hex(&buf))
}

struct TokenEntry {
    name: String,
    digest: [u8; 32],
    role: Role,
    nodes: Option<Vec<String>>,
}

/// The credential checker. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<Vec<TokenEntry>>,
    sessions: Arc<session::Sessions>,
    anonymous_read: bool,
}

impl Auth {
    pub fn new(config: &Config) -> Auth {
        let tokens = config
            .api_tokens
            .iter()
            .filter_map(|t| {
                Some(TokenEntry {
                    name: t.name.clone(),
                    digest: token_digest(&t.token)?,
                    role: t.role,
                    nodes: t.nodes.clone(),
                })
            })
            .collect();
        Auth {
            tokens: Arc::new(tokens),
            sessions: Arc::new(session::Sessions::new(
                config.users.clone(),
                config.control.clone(),
            )),
            anonymous_read: config.anonymous_read,
        }
    }

    /// Whether any token or user is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.sessions.has_users()
    }

    /// Whether `POST /api/login` can succeed for someone.
    pub fn login_available(&self) -> bool {
        self.sessions.has_users()
    }

    /// Whether reads need a credential.
    pub fn reads_need_credential(&self) -> bool {
        self.enabled() && !self.anonymous_read
    }

    /// The identity of a bearer token, checked against every configured digest in
    /// constant time (no early exit).
    pub fn token(&self, presented: &str) -> Option<Identity> {
        let digest = sha256(presented.trim().as_bytes());
        let mut found = None;
        for t in self.tokens.iter() {
            if bool::from(t.digest.ct_eq(&digest)) {
                found = Some(t);
            }
        }
        found.map(|t| Identity {
            name: t.name.clone(),
            role: Some(t.role),
            nodes: t.nodes.clone(),
            via: Via::Token,
        })
    }

    /// The identity of a session cookie, if the session is live.
    pub fn session(&self, id: &str) -> Option<Identity> {
        self.sessions.get(id)
    }

    /// Checks a user's password (slowed, then locked out, after repeated failures from
    /// `source`) and opens a session.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        source: Option<IpAddr>,
    ) -> Result<LoginOk, LoginError> {
        self.sessions.login(name, password, source).await
    }

    /// Ends a session (unknown ids are ignored).
    pub fn logout(&self, id: &str) {
        self.sessions.logout(id);
    }
}

/// Masks an IP address for readers who may not see it: `198.51.100.7` → `198.51.x.x`,
/// `2001:db8:1::5` → `2001:db8:x:x`; anything else → `x`.
pub fn mask_ip(ip: &str) -> String {
    match ip.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.x.x", o[0], o[1])
        }
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:x:x", s[0], s[1])
        }
        Err(_) if ip == "(none)" || ip.is_empty() => ip.to_owned(),
        Err(_) => "x".to_owned(),
    }
}

/// Masks every `"ip"` string value in a JSON document (REST answers for masked readers),
/// and the `"value"` of a `{"field": "ip", "value": …}` change (`/api/history/links`).
pub fn mask_ips_in(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.get("field").and_then(|f| f.as_str()) == Some("ip") {
                if let Some(serde_json::Value::String(s)) = map.get_mut("value") {
                    *s = mask_ip(s);
                }
            }
            for (k, val) in map.iter_mut() {
                match val {
                    serde_json::Value::String(s) if k == "ip" => *s = mask_ip(s),
                    other => mask_ips_in(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_ips_in),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Control && Role::Control > Role::Read);
        let id = Identity {
            name: "x".into(),
            role: Some(Role::Control),
            nodes: Some(vec!["1999".into()]),
            via: Via::Token,
        };
        assert!(id.has(Role::Read) && id.has(Role::Control) && !id.has(Role::Admin));
        assert!(id.may_node("1999") && !id.may_node("2000"));
        assert!(id.sees_ips());
        assert!(!Identity::anonymous(true).sees_ips());
        assert!(Identity::anonymous(false).sees_ips());
        assert!(!Identity::anonymous(true).has(Role::Read));
    }

    #[test]
    fn token_digests_plain_and_hashed() {
        let secret = "correct-horse-battery-staple";
        let d = token_digest(secret).expect("long enough");
        let hashed = format!("sha256:{}", hex(&d));
        assert_eq!(token_digest(&hashed), Some(d));
        assert_eq!(token_digest("short"), None);
        assert_eq!(token_digest("sha256:zz"), None);
        assert_eq!(token_digest(&format!("sha256:{}", "g".repeat(64))), None);
    }

    #[test]
    fn masks_addresses() {
        assert_eq!(mask_ip("198.51.100.7"), "198.51.x.x");
        assert_eq!(mask_ip("2001:db8:1::5"), "2001:db8:x:x");
        assert_eq!(mask_ip("(none)"), "(none)");
        assert_eq!(mask_ip("host.example"), "x");
        let mut v = serde_json::json!({"links":[{"node":"2000","ip":"10.1.2.3"},{"ip":null}]});
        mask_ips_in(&mut v);
        assert_eq!(v["links"][0]["ip"], "10.1.x.x");
        assert!(v["links"][1]["ip"].is_null());
        let mut v = serde_json::json!({"items":[{"changes":[
            {"field":"ip","value":"203.0.113.9"},{"field":"mode","value":"transceive"}]}]});
        mask_ips_in(&mut v);
        assert_eq!(v["items"][0]["changes"][0]["value"], "203.0.x.x");
        assert_eq!(v["items"][0]["changes"][1]["value"], "transceive");
    }
}
