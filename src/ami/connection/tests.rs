use super::*;

fn pending(action: &str) -> (Pending, oneshot::Receiver<Result<Reply, ActionError>>) {
    let (tx, rx) = oneshot::channel();
    (
        Pending {
            tx,
            action: action.into(),
        },
        rx,
    )
}

#[test]
fn replies_match_by_action_id_then_oldest_waiting() {
    let mut map = HashMap::new();
    let mut order = VecDeque::new();
    for id in ["a", "b", "c"] {
        let (p, _rx) = pending(id);
        map.insert(id.to_owned(), p);
        order.push_back(id.to_owned());
    }
    let by_id = Frame::from_headers(&[("Response", "Success"), ("ActionID", "b")]);
    assert_eq!(
        take_pending(&mut map, &mut order, &by_id).map(|p| p.action),
        Some("b".into())
    );
    // A reply without ActionID (VoterStatus's empty reply) goes to the oldest action.
    let bare = Frame::default();
    assert_eq!(
        take_pending(&mut map, &mut order, &bare).map(|p| p.action),
        Some("a".into())
    );
    assert_eq!(
        take_pending(&mut map, &mut order, &bare).map(|p| p.action),
        Some("c".into())
    );
    assert!(take_pending(&mut map, &mut order, &bare).is_none());
    // An unknown ActionID matches nothing.
    let (p, _rx) = pending("d");
    map.insert("d".into(), p);
    order.push_back("d".into());
    let stray = Frame::from_headers(&[("Response", "Success"), ("ActionID", "zzz")]);
    assert!(take_pending(&mut map, &mut order, &stray).is_none());
    assert_eq!(map.len(), 1);
}

#[test]
fn errors_are_worded_for_operators() {
    let refused = ConnectError::from_io(
        std::io::ErrorKind::ConnectionRefused.into(),
        "127.0.0.1:5038",
    );
    assert_eq!(
        refused.to_string(),
        "connection refused by 127.0.0.1:5038 — is Asterisk running and is the manager enabled in manager.conf?"
    );
    assert_eq!(refused.reason(), "refused");
    let auth = ConnectError::AuthFailed {
        user: "admin".into(),
    };
    assert_eq!(
        auth.to_string(),
        "authentication failed for user admin — check ami_username/ami_password"
    );
}
