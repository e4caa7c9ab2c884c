//! Browser login sessions (cookie id → user, CSRF token, expiry) and the failed-login
//! brake per source address: after `login_slowdown_after` failures each further failure
//! is answered late (1 s, 2 s, 4 s, at most 8 s); after `login_lockout_after` failures the
//! address is locked out for `login_lockout` (429 with `Retry-After`). A success clears
//! the count; failures are forgotten once `login_lockout` passes without another.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{Identity, Role, Via, password, random_hex};
use crate::config::{ControlConfig, UserConfig};

/// Live sessions and tracked addresses kept at most (oldest dropped past that).
const MAX_ENTRIES: usize = 10_000;
/// Longest delay put on a failed login.
const MAX_DELAY: Duration = Duration::from_secs(8);

/// A successful login.
#[derive(Debug, Clone)]
pub struct LoginOk {
    pub identity: Identity,
    /// The cookie value (never logged).
    pub session_id: String,
    pub csrf_token: String,
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("wrong user name or password")]
    Bad,
    #[error("too many failed logins from this address: try again in {} s", retry_after.as_secs().max(1))]
    LockedOut { retry_after: Duration },
    #[error("{0}")]
    Internal(String),
}

struct Session {
    name: String,
    role: Role,
    nodes: Option<Vec<String>>,
    csrf: String,
    expires: Instant,
}

#[derive(Default)]
struct Failures {
    count: u32,
    last: Option<Instant>,
    locked_until: Option<Instant>,
}

pub(super) struct Sessions {
    users: Vec<UserConfig>,
    control: ControlConfig,
    live: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// A hash to verify against when the user name is unknown (same cost as a real one).
    dummy: std::sync::OnceLock<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    pub(super) fn new(users: Vec<UserConfig>, control: ControlConfig) -> Sessions {
        Sessions {
            users,
            control,
            live: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            dummy: std::sync::OnceLock::new(),
        }
    }

    pub(super) fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    pub(super) fn get(&self, id: &str) -> Option<Identity> {
        let now = Instant::now();
        let mut live = lock(&self.live);
        let s = live.get(id)?;
        if s.expires <= now {
            live.remove(id);
            return None;
        }
        Some(Identity {
            name: s.name.clone(),
            role: Some(s.role),
            nodes: s.nodes.clone(),
            via: Via::Cookie {
                session: id.to_owned(),
                csrf: s.csrf.clone(),
            },
        })
    }

    pub(super) fn logout(&self, id: &str) {
        lock(&self.live).remove(id);
    }

    /// How long the address is still locked out, if it is.
    fn locked(&self, source: IpAddr, now: Instant) -> Option<Duration> {
        let mut f = lock(&self.failures);
        let entry = f.get_mut(&source)?;
        match entry.locked_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                f.remove(&source);
                None
            }
            None => None,
        }
    }

    /// Counts a failure; returns how long to hold the answer back.
    fn failed(&self, source: IpAddr, now: Instant) -> Duration {
        let window = self.control.login_lockout.0;
        let mut f = lock(&self.failures);
        if f.len() >= MAX_ENTRIES && !f.contains_key(&source) {
            f.retain(|_, e| e.last.is_some_and(|l| now.duration_since(l) < window));
        }
        let e = f.entry(source).or_default();
        if e.last.is_some_and(|l| now.duration_since(l) >= window) {
            *e = Failures::default();
        }
        e.count += 1;
        e.last = Some(now);
        if e.count >= self.control.login_lockout_after {
            e.locked_until = Some(now + window);
        }
        let over = e.count.saturating_sub(self.control.login_slowdown_after);
        if over == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1u64 << (over - 1).min(3)).min(MAX_DELAY)
        }
    }

    pub(super) async fn login(
        &self,
        name: &str,
        pw: &str,
        source: Option<IpAddr>,
    ) -> Result<LoginOk, LoginError> {
        let source = source.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        if let Some(retry_after) = self.locked(source, Instant::now()) {
            return Err(LoginError::LockedOut { retry_after });
        }
        let user = self.users.iter().find(|u| u.name == name).cloned();
        let hash = match &user {
            Some(u) => Some(u.password_hash.clone()),
            None => self
                .dummy
                .get_or_init(|| password::hash("dummy password for timing").ok())
                .clone(),
        };
        let pw = pw.to_owned();
        let matched =
            tokio::task::spawn_blocking(move || hash.is_some_and(|h| password::verify(&pw, &h)))
                .await
                .map_err(|e| LoginError::Internal(format!("password check failed: {e}")))?;
        let user = match user {
            Some(u) if matched => u,
            _ => {
                let delay = self.failed(source, Instant::now());
                tokio::time::sleep(delay).await;
                return Err(LoginError::Bad);
            }
        };
        lock(&self.failures).remove(&source);
        self.open(user)
    }

    fn open(&self, user: UserConfig) -> Result<LoginOk, LoginError> {
        let session_id = random_hex(32).map_err(LoginError::Internal)?;
        let csrf = random_hex(32).map_err(LoginError::Internal)?;
        let now = Instant::now();
        let mut live = lock(&self.live);
        if live.len() >= MAX_ENTRIES {
            live.retain(|_, s| s.expires > now);
            if live.len() >= MAX_ENTRIES {
                if let Some(oldest) = live
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
                {
                    live.remove(&oldest);
                }
            }
        }
        live.insert(
            session_id.clone(),
            Session {
                name: user.name.clone(),
                role: user.role,
                nodes: user.nodes.clone(),
                csrf: csrf.clone(),
                expires: now + self.control.session_ttl.0,
            },
        );
        Ok(LoginOk {
            identity: Identity {
                name: user.name,
                role: Some(user.role),
                nodes: user.nodes,
                via: Via::Cookie {
                    session: session_id.clone(),
                    csrf: csrf.clone(),
                },
            },
            session_id,
            csrf_token: csrf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn sessions(hash: &str) -> Sessions {
        let control = ControlConfig {
            login_slowdown_after: 2,
            login_lockout_after: 4,
            login_lockout: Dur(Duration::from_secs(60)),
            session_ttl: Dur(Duration::from_secs(3600)),
            ..ControlConfig::default()
        };
        Sessions::new(
            vec![UserConfig {
                name: "alice".into(),
                password_hash: hash.into(),
                role: Role::Control,
                nodes: None,
            }],
            control,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn failures_slow_down_then_lock_out_and_expire() {
        let s = sessions(&password::hash("right password").expect("hash"));
        let ip: IpAddr = "192.0.2.9".parse().expect("ip");
        let now = Instant::now();
        assert_eq!(s.failed(ip, now), Duration::ZERO);
        assert_eq!(s.failed(ip, now), Duration::ZERO);
        assert_eq!(s.failed(ip, now), Duration::from_secs(1));
        assert_eq!(s.locked(ip, now), None);
        assert_eq!(s.failed(ip, now), Duration::from_secs(2));
        assert_eq!(s.locked(ip, now), Some(Duration::from_secs(60)));
        let err = s.login("alice", "right password", Some(ip)).await;
        assert!(matches!(err, Err(LoginError::LockedOut { .. })), "{err:?}");
        tokio::time::advance(Duration::from_secs(61)).await;
        let ok = s
            .login("alice", "right password", Some(ip))
            .await
            .expect("lockout over");
        assert_eq!(ok.identity.name, "alice");
        assert!(s.get(&ok.session_id).is_some());
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(s.get(&ok.session_id).is_none(), "sessions expire");
    }

    #[tokio::test]
    async fn unknown_users_and_wrong_passwords_fail_alike() {
        let s = sessions(&password::hash("right password").expect("hash"));
        assert_eq!(
            s.login("bob", "right password", None).await.err(),
            Some(LoginError::Bad)
        );
        assert_eq!(
            s.login("alice", "nope", None).await.err(),
            Some(LoginError::Bad)
        );
        let ok = s.login("alice", "right password", None).await.expect("ok");
        s.logout(&ok.session_id);
        assert!(s.get(&ok.session_id).is_none());
    }
}
