//! Argon2id password hashes: making one (`allstar-nexus hash-password`) and checking a
//! login against one. Checking is slow on purpose; callers run it off the async threads.

use std::io::{BufRead, IsTerminal};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

pub use crate::config::identity::is_argon2id;

/// An Argon2id hash (PHC string, random salt, default parameters) of `password`.
pub fn hash(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches `hash`. A malformed hash never matches.
pub fn verify(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// `allstar-nexus hash-password`: reads a password (without echo on a terminal, asked
/// twice; one line from a pipe), prints its Argon2id hash for `users[].password_hash`.
pub fn run_hash_password() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            anyhow::bail!("the two passwords differ; nothing printed");
        }
        first
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.chars().count() < 8 {
        anyhow::bail!("the password must be at least 8 characters");
    }
    println!("{}", hash(&password).map_err(anyhow::Error::msg)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_reject() {
        let h = hash("correct horse").expect("hash");
        assert!(is_argon2id(&h), "{h}");
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("correct horse", "not a hash"));
        assert!(!is_argon2id("$2b$12$bcryptlooking"));
    }
}
