//! AMI event classes and the `Events:` / `EventMask:` value parser (`strings_to_mask` in
//! Asterisk's `main/manager.c`, ami-app-rpt.md §1.4).

// Class names in bit order (shared with the `ami_events` check in config).
use crate::config::EVENT_CLASSES as CLASSES;

/// `EVENT_FLAG_SYSTEM`: FullyBooted and friends.
pub(crate) const SYSTEM: u32 = 1 << 0;
/// `EVENT_FLAG_CALL`: every app_rpt event.
pub(crate) const CALL: u32 = 1 << 1;
/// `EVENT_FLAG_DIALPLAN`: core `VarSet`.
pub(crate) const DIALPLAN: u32 = 1 << 11;
/// `EVENT_FLAG_SECURITY`: SuccessfulAuth.
pub(crate) const SECURITY: u32 = 1 << 17;
/// Every class.
pub(crate) const ALL: u32 = (1 << 19) - 1;

/// Parses an event mask like Asterisk: all digits → numeric bitmask; a false word → none;
/// a true word → all; otherwise a comma list of class names (exact, case-sensitive, as
/// `ast_instring` compares). `None` = invalid (empty).
pub(crate) fn strings_to_mask(value: &str) -> Option<u32> {
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let n = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some((n & u64::from(ALL)) as u32);
    }
    let lower = value.to_ascii_lowercase();
    if matches!(lower.as_str(), "no" | "false" | "n" | "f" | "off") {
        return Some(0);
    }
    if matches!(lower.as_str(), "yes" | "true" | "y" | "t" | "on") {
        return Some(ALL);
    }
    let mut mask = 0;
    for token in value.split(',') {
        if token == "all" {
            mask |= ALL;
        } else if let Some(bit) = CLASSES.iter().position(|c| *c == token) {
            mask |= 1 << bit;
        }
    }
    Some(mask)
}

/// The `Privilege:` text of an event class: `call,all`.
pub(crate) fn privilege(class: u32) -> String {
    let names: Vec<&str> = CLASSES
        .iter()
        .enumerate()
        .filter(|(bit, _)| class & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect();
    format!("{},all", names.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_asterisk() {
        assert_eq!(strings_to_mask("on"), Some(ALL));
        assert_eq!(strings_to_mask("off"), Some(0));
        assert_eq!(strings_to_mask("0"), Some(0));
        assert_eq!(strings_to_mask("2"), Some(CALL));
        assert_eq!(strings_to_mask("call"), Some(CALL));
        assert_eq!(strings_to_mask("call,dialplan"), Some(CALL | DIALPLAN));
        assert_eq!(strings_to_mask("system,all"), Some(ALL));
        assert_eq!(strings_to_mask("Call"), Some(0));
        assert_eq!(strings_to_mask(""), None);
        assert_eq!(privilege(CALL), "call,all");
        assert_eq!(privilege(DIALPLAN), "dialplan,all");
    }
}
