//! The link strings of app_rpt (ami-app-rpt.md §2.2 item 3, §2.8):
//!
//! - `RPT_ALINKS` = `<n>,<name><mode><keyed>,…`: adjacent links, e.g.
//!   `3,2000TU,2001TK,WD5M-PTU`. Names may be text, so an entry is read from its end: the
//!   last letter is `K`/`U`, the one before it the mode `T`/`R`/`C`.
//! - `RPT_LINKS` = `<n>,<mode><name>,…`: every reachable node, e.g. `3,T2000,T2005,T2006`.
//! - `LinkedNodes:` = `<mode><name>` joined by `, `, or `<NONE>`.
//!
//! Empty forms: `""` and `"0"` (both occur, 2.8). The truncation sentinels `000000RU` and
//! `R000000` are dropped. Surrounding blanks (legacy values ended in `\n`) are ignored.

use serde::Serialize;

use super::{MAX_LINKS, MAX_REACHABLE, RptError};
use crate::rpt::types::{LinkedNode, Mode};

/// One adjacent link from `RPT_ALINKS`. `S` is `String` for an event (the model keeps
/// it) and `&str` inside a borrowed XStat reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ALink<S = String> {
    pub name: S,
    pub mode: Option<Mode>,
    /// Audio is being received from this link now (`K`).
    pub keyed: bool,
}

const ALINKS_SENTINEL: &str = "000000RU";
const LINKS_SENTINEL: &str = "R000000";

/// Parses an `RPT_ALINKS` value.
pub fn parse_alinks(value: &str) -> Result<Vec<ALink>, RptError> {
    alinks_with(value, str::to_owned)
}

/// Parses an `RPT_ALINKS` value without copying the names (XStat's `Var:` line).
pub(super) fn parse_alinks_borrowed(value: &str) -> Result<Vec<ALink<&str>>, RptError> {
    alinks_with(value, |name| name)
}

/// Parses an `RPT_ALINKS` value, making each name with `name`.
fn alinks_with<'a, S>(
    value: &'a str,
    name: impl Fn(&'a str) -> S,
) -> Result<Vec<ALink<S>>, RptError> {
    check_count("RPT_ALINKS", value, MAX_LINKS)?;
    let mut links = Vec::with_capacity(entry_capacity(value));
    for entry in counted_entries("RPT_ALINKS", value)? {
        if entry != ALINKS_SENTINEL {
            let a = parse_alink(entry)?;
            links.push(ALink {
                name: name(a.name),
                mode: a.mode,
                keyed: a.keyed,
            });
        }
    }
    Ok(links)
}

/// Parses an `RPT_LINKS` value. Entries without a mode letter get `mode: None`.
pub fn parse_links(value: &str) -> Result<Vec<LinkedNode>, RptError> {
    check_count("RPT_LINKS", value, MAX_REACHABLE)?;
    let mut nodes = Vec::with_capacity(entry_capacity(value));
    let entries = counted_entries("RPT_LINKS", value)?;
    nodes.extend(
        entries
            .filter(|entry| *entry != LINKS_SENTINEL)
            .map(|entry| mode_and_name(entry).to_owned_node()),
    );
    Ok(nodes)
}

/// Parses a `LinkedNodes:` value (`T2000, T2001` or `<NONE>`), keeping duplicates in order.
/// The names are borrowed from `value`: the model copies them only when the network changed.
pub fn parse_linked_nodes(value: &str) -> Vec<LinkedNode<&str>> {
    let value = value.trim_ascii();
    if value == "<NONE>" {
        return Vec::new();
    }
    let mut nodes = Vec::with_capacity(entry_capacity(value));
    let entries = value.split(',').map(str::trim_ascii);
    nodes.extend(
        entries
            .filter(|e| !e.is_empty() && *e != LINKS_SENTINEL)
            .map(mode_and_name),
    );
    nodes
}

/// Refuses a list with more than `limit` entries (plus the leading count), before any
/// entry is parsed or stored.
pub(super) fn check_count(list: &'static str, value: &str, limit: usize) -> Result<(), RptError> {
    if memchr::memchr_iter(b',', value.as_bytes())
        .nth(limit)
        .is_some()
    {
        return Err(RptError::TooManyLinks { list, limit });
    }
    Ok(())
}

/// An upper bound on the entries of a comma-separated list (lists can hold thousands).
fn entry_capacity(value: &str) -> usize {
    memchr::memchr_iter(b',', value.as_bytes()).count() + 1
}

/// Checks the leading count of `<n>,entry,…` and yields the non-empty entries.
fn counted_entries<'a>(
    list: &'static str,
    value: &'a str,
) -> Result<impl Iterator<Item = &'a str>, RptError> {
    let value = value.trim_ascii();
    let (count, rest) = value.split_once(',').unwrap_or((value, ""));
    let count = count.trim_ascii();
    if !count.is_empty() && !count.bytes().all(|b| b.is_ascii_digit()) {
        let start = value.chars().take(40).collect();
        return Err(RptError::LinkCount {
            list,
            count: count.to_owned(),
            start,
        });
    }
    Ok(rest
        .split(',')
        .map(str::trim_ascii)
        .filter(|entry| !entry.is_empty()))
}

/// `<name><mode><K|U>`, read from the end.
fn parse_alink(entry: &str) -> Result<ALink<&str>, RptError> {
    let problem = |problem| RptError::LinkEntry {
        list: "RPT_ALINKS",
        entry: entry.to_owned(),
        problem,
    };
    let mut chars = entry.chars();
    let keyed = match chars.next_back() {
        Some('K') => true,
        Some('U') => false,
        _ => return Err(problem("the last letter must be K (keyed) or U (unkeyed)")),
    };
    let Some(mode) = chars.next_back().and_then(Mode::from_letter) else {
        return Err(problem("the letter before K/U must be a mode: T, R or C"));
    };
    let name = chars.as_str();
    if name.is_empty() {
        return Err(problem("there is no node name before the mode letter"));
    }
    Ok(ALink {
        name,
        mode: Some(mode),
        keyed,
    })
}

/// `<mode><name>`; a token without a mode letter is all name.
fn mode_and_name(entry: &str) -> LinkedNode<&str> {
    let mut chars = entry.chars();
    match chars.next().and_then(Mode::from_letter) {
        Some(mode) if !chars.as_str().is_empty() => LinkedNode {
            node: chars.as_str(),
            mode: Some(mode),
        },
        _ => LinkedNode {
            node: entry,
            mode: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alink(name: &str, mode: Mode, keyed: bool) -> ALink {
        ALink {
            name: name.into(),
            mode: Some(mode),
            keyed,
        }
    }

    /// Owned for `parse_links` (events), borrowed for `parse_linked_nodes`.
    fn node<S: From<&'static str>>(mode: Option<Mode>, name: &'static str) -> LinkedNode<S> {
        LinkedNode {
            node: name.into(),
            mode,
        }
    }

    #[test]
    fn alinks_empty_forms() {
        assert_eq!(parse_alinks(""), Ok(vec![]));
        assert_eq!(parse_alinks("0"), Ok(vec![]));
        assert_eq!(parse_alinks(" 0\n"), Ok(vec![]));
    }

    #[test]
    fn alinks_composed_session() {
        // ami-app-rpt.md §5.
        let links = parse_alinks("3,3123456TU,2001TU,2000TK").unwrap();
        assert_eq!(
            links,
            vec![
                alink("3123456", Mode::T, false),
                alink("2001", Mode::T, false),
                alink("2000", Mode::T, true),
            ]
        );
        assert_eq!(
            parse_alinks("3,2000TU,2001TK,3123456TU").unwrap()[1],
            alink("2001", Mode::T, true)
        );
    }

    #[test]
    fn alinks_real_captures() {
        // brucemack ampersand notes; Allmon3 issue #35; app_rpt issue #469.
        assert_eq!(
            parse_alinks("1,29999TU").unwrap(),
            vec![alink("29999", Mode::T, false)]
        );
        assert_eq!(
            parse_alinks("3,1910TU,3507690TU,547612TU").unwrap().len(),
            3
        );
        assert_eq!(
            parse_alinks("1,63061TU").unwrap(),
            vec![alink("63061", Mode::T, false)]
        );
    }

    #[test]
    fn alinks_text_names_are_read_from_the_end() {
        // app_rpt issue #706: a phone-portal client.
        assert_eq!(
            parse_alinks("1,WD5M-PTU").unwrap(),
            vec![alink("WD5M-P", Mode::T, false)]
        );
        assert_eq!(
            parse_alinks("2,KTRK,2000RU").unwrap(),
            vec![alink("KT", Mode::R, true), alink("2000", Mode::R, false)]
        );
        assert_eq!(
            parse_alinks("1,2000CU").unwrap(),
            vec![alink("2000", Mode::C, false)]
        );
    }

    #[test]
    fn alinks_sentinel_and_legacy_whitespace() {
        assert_eq!(
            parse_alinks("2,2000TU,000000RU").unwrap(),
            vec![alink("2000", Mode::T, false)]
        );
        assert_eq!(
            parse_alinks("1,2000TK\n").unwrap(),
            vec![alink("2000", Mode::T, true)]
        );
    }

    #[test]
    fn alinks_errors_name_the_entry() {
        let err = parse_alinks("2,2000TU,2001XU").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"RPT_ALINKS entry "2001XU" is malformed: the letter before K/U must be a mode: T, R or C"#
        );
        let err = parse_alinks("1,2000T").unwrap_err();
        assert!(
            err.to_string().contains("K (keyed) or U (unkeyed)"),
            "{err}"
        );
        let err = parse_alinks("1,TU").unwrap_err();
        assert!(err.to_string().contains("no node name"), "{err}");
        let err = parse_alinks("2000TU,2001TK").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"RPT_ALINKS count "2000TU" is not a number (value starts "2000TU,2001TK")"#
        );
    }

    #[test]
    fn links_forms() {
        use Mode::T;
        assert_eq!(parse_links(""), Ok(vec![]));
        assert_eq!(parse_links("0"), Ok(vec![]));
        assert_eq!(
            parse_links("5,T3123456,T2001,T2000,T2005,T2006").unwrap(),
            ["3123456", "2001", "2000", "2005", "2006"]
                .map(|n| node(Some(T), n))
                .to_vec()
        );
        // app_rpt issue #469 (first two of 69).
        assert_eq!(parse_links("69,T63061,T59398").unwrap().len(), 2);
        assert_eq!(
            parse_links("2,T2000,R000000").unwrap(),
            vec![node(Some(T), "2000")]
        );
        assert_eq!(
            parse_links("2,R2000,C2001").unwrap()[1],
            node(Some(Mode::C), "2001")
        );
        assert_eq!(parse_links("1,2000").unwrap(), vec![node(None, "2000")]);
        assert!(matches!(
            parse_links("x,T2000"),
            Err(RptError::LinkCount {
                list: "RPT_LINKS",
                ..
            })
        ));
    }

    #[test]
    fn linked_nodes_forms() {
        use Mode::{R, T};
        assert!(parse_linked_nodes("<NONE>").is_empty());
        assert!(parse_linked_nodes("").is_empty());
        assert_eq!(
            parse_linked_nodes("T2000, T2001, T2005, T2006, T3123456"),
            ["2000", "2001", "2005", "2006", "3123456"]
                .map(|n| node(Some(T), n))
                .to_vec()
        );
        // brucemack ampersand notes.
        let real = parse_linked_nodes(
            "R1010, R1020, T1950, T1951, T1980, T29283, T29284, T29285, T29999, T48335, T49999",
        );
        assert_eq!(real.len(), 11);
        assert_eq!(real[0], node(Some(R), "1010"));
        assert_eq!(real[10], node(Some(T), "49999"));
    }

    #[test]
    fn linked_nodes_keep_duplicates_in_order() {
        // Allmon3 issue #260: the same node twice with different letters.
        let nodes = parse_linked_nodes("T2000, R2000, T2001, T2000");
        assert_eq!(
            nodes,
            vec![
                node(Some(Mode::T), "2000"),
                node(Some(Mode::R), "2000"),
                node(Some(Mode::T), "2001"),
                node(Some(Mode::T), "2000"),
            ]
        );
    }

    #[test]
    fn linked_nodes_tolerate_odd_spacing_and_text_names() {
        assert_eq!(
            parse_linked_nodes(" T2000,T2001 ,  TWD5M-P"),
            vec![
                node(Some(Mode::T), "2000"),
                node(Some(Mode::T), "2001"),
                node(Some(Mode::T), "WD5M-P")
            ]
        );
    }
}
