//! Identities as configured: roles, `api_tokens:` and `users:` entries, and their checks at
//! load time (names, token and hash formats, known nodes). They live here, not in `auth`,
//! so `config` imports nothing above it; `auth` uses and re-exports them.
//!
//! Nothing here logs or returns a secret: the `Debug` of an entry masks it, and the
//! messages name the entry, never its token or hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// What an identity may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Control,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Control => "control",
            Role::Admin => "admin",
        }
    }
}

/// One entry of `api_tokens:` (see `docs/security.md`).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenConfig {
    pub name: String,
    /// The secret itself, or `sha256:<64 hex>` of it. Never logged.
    pub token: String,
    pub role: Role,
    /// Local nodes this token may act on and read (absent = all): REST, WebSocket and
    /// history show it only these nodes, and `/metrics` (a whole-daemon view) is refused
    /// to it (`docs/security.md`, "Node limits").
    #[serde(default, deserialize_with = "opt_node_ids")]
    pub nodes: Option<Vec<String>>,
}

impl std::fmt::Debug for ApiTokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTokenConfig")
            .field("name", &self.name)
            .field("token", &"********")
            .field("role", &self.role)
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// One entry of `users:` (browser logins).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Argon2id PHC string from `allstar-nexus hash-password`.
    pub password_hash: String,
    pub role: Role,
    /// Local nodes this user may act on and read (absent = all), as for a token.
    #[serde(default, deserialize_with = "opt_node_ids")]
    pub nodes: Option<Vec<String>>,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password_hash", &"********")
            .field("role", &self.role)
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// Node lists written as numbers or strings.
fn opt_node_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    struct Id(#[serde(deserialize_with = "super::node_id")] String);
    let v: Option<Vec<Id>> = Option::deserialize(d)?;
    Ok(v.map(|v| v.into_iter().map(|i| i.0).collect()))
}

/// A problem in `api_tokens` or `users`, with the key to point at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthConfigError {
    key: &'static str,
    message: String,
}

impl AuthConfigError {
    fn new(key: &'static str, message: impl Into<String>) -> AuthConfigError {
        AuthConfigError {
            key,
            message: message.into(),
        }
    }

    /// The YAML key the problem is at.
    pub fn key(&self) -> &'static str {
        self.key
    }
}

/// Checks the credentials section at load time: unique names, token and hash formats,
/// known nodes (the `control:` numbers are ranged with the other settings in `config`).
/// Messages never contain a secret.
pub fn check_config(
    tokens: &[ApiTokenConfig],
    users: &[UserConfig],
    nodes: &BTreeMap<String, String>,
) -> Result<(), AuthConfigError> {
    let mut names = std::collections::BTreeSet::new();
    for t in tokens {
        check_name("api_tokens", &t.name, &mut names)?;
        if token_digest(&t.token).is_none() {
            return Err(AuthConfigError::new(
                "token",
                format!(
                    "api_tokens entry {:?}: the token must be at least 16 characters, or \
                     sha256:<64 hex digits> of it",
                    t.name
                ),
            ));
        }
        check_nodes("api_tokens", &t.name, t.nodes.as_deref(), nodes)?;
    }
    for u in users {
        check_name("users", &u.name, &mut names)?;
        if !is_argon2id(&u.password_hash) {
            return Err(AuthConfigError::new(
                "password_hash",
                format!(
                    "users entry {:?}: password_hash must be an Argon2id hash \
                     ($argon2id$...); make one with `allstar-nexus hash-password`",
                    u.name
                ),
            ));
        }
        check_nodes("users", &u.name, u.nodes.as_deref(), nodes)?;
    }
    Ok(())
}

fn check_name(
    section: &'static str,
    name: &str,
    seen: &mut std::collections::BTreeSet<String>,
) -> Result<(), AuthConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        && !name.starts_with("script:");
    if !ok {
        return Err(AuthConfigError::new(
            "name",
            format!(
                "{section}: name {:?} must be 1-64 letters, digits, '-', '_', '.', '@'",
                name.chars().take(64).collect::<String>()
            ),
        ));
    }
    if !seen.insert(name.to_owned()) {
        return Err(AuthConfigError::new(
            "name",
            format!("{section}: name {name:?} is used twice (tokens and users share names)"),
        ));
    }
    Ok(())
}

fn check_nodes(
    section: &'static str,
    name: &str,
    list: Option<&[String]>,
    nodes: &BTreeMap<String, String>,
) -> Result<(), AuthConfigError> {
    for n in list.unwrap_or_default() {
        if !nodes.contains_key(n) {
            return Err(AuthConfigError::new(
                "nodes",
                format!("{section} entry {name:?}: node {n:?} is not a configured node"),
            ));
        }
    }
    Ok(())
}

/// SHA-256 of a configured token: `sha256:<hex>` as given, or the hash of the secret.
/// `None` when the value is neither (too short a secret, bad hex).
pub fn token_digest(configured: &str) -> Option<[u8; 32]> {
    if let Some(hex) = configured.strip_prefix("sha256:") {
        return parse_hex32(hex.trim());
    }
    if configured.chars().count() < 16 {
        return None;
    }
    Some(sha256(configured.as_bytes()))
}

/// SHA-256 of bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(bytes));
    out
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether a configured hash looks like an Argon2id PHC string we can verify.
pub fn is_argon2id(hash: &str) -> bool {
    hash.starts_with("$argon2id$") && argon2::PasswordHash::new(hash).is_ok()
}
