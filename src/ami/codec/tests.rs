use super::*;

fn decode_all(codec: &mut AmiCodec, bytes: &[u8]) -> Vec<Incoming> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(item) = codec.decode(&mut buf).expect("decode") {
        out.push(item);
    }
    out
}

fn frames(items: Vec<Incoming>) -> Vec<Frame> {
    items
        .into_iter()
        .filter_map(|i| match i {
            Incoming::Frame(f) => Some(f),
            Incoming::Banner(_) => None,
        })
        .collect()
}

#[test]
fn banner_then_login_reply_are_separate() {
    let mut c = AmiCodec::client(DEFAULT_MAX_FRAME_BYTES);
    let items = decode_all(
        &mut c,
        b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\n",
    );
    assert_eq!(
        items[0],
        Incoming::Banner("Asterisk Call Manager/11.0.0".into())
    );
    let Incoming::Frame(f) = &items[1] else {
        panic!("frame expected")
    };
    assert_eq!(f.response(), Some("Success"));
    assert_eq!(f.action_id(), Some("1"));
    assert_eq!(f.get("message"), Some("Authentication accepted"));
}

#[test]
fn repeated_keys_keep_order_and_empty_values_survive() {
    let mut c = AmiCodec::client(1 << 20);
    let items = decode_all(
        &mut c,
        b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nNode: 1999\r\nConn: 2001      198.51.100.7        0           IN         00:10:20            ESTABLISHED         \r\nConn: 3123456                       0           IN         00:02:15            ESTABLISHED         \r\nVar: RPT_ALINKS=\r\nOutput: \r\n<NONE>\r\n\r\n",
    );
    let f = &frames(items)[0];
    let conns: Vec<_> = f.get_all("Conn").collect();
    assert_eq!(conns.len(), 2);
    assert!(conns[0].starts_with("2001      198.51.100.7"));
    assert!(conns[1].starts_with("3123456                       0"));
    assert_eq!(f.get("Var"), Some("RPT_ALINKS="));
    assert_eq!(f.get("Output"), Some(""));
    assert_eq!(f.headers().last(), Some(("", "<NONE>")));
}

#[test]
fn legacy_stray_newline_in_event_values_does_not_split_the_frame() {
    let mut c = AmiCodec::client(1 << 20);
    let items = decode_all(
        &mut c,
        b"Asterisk Call Manager/1.0\r\nEvent: RPT_TXKEYED\r\nPrivilege: call,all\r\nNode: 1999\r\nEventValue: 1\r\nLastKeyedTime: Thu Jan  1 00:00:00 1970\n\r\nLastTxKeyedTime: Thu Jan  1 00:00:00 1970\n\r\n\r\n",
    );
    let fs = frames(items);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].get("LastKeyedTime"), Some("Thu Jan  1 00:00:00 1970"));
    assert_eq!(
        fs[0].get("LastTxKeyedTime"),
        Some("Thu Jan  1 00:00:00 1970")
    );
}

#[test]
fn legacy_follows_block_keeps_blank_lines() {
    let mut c = AmiCodec::client(1 << 20);
    let items = decode_all(
        &mut c,
        b"Asterisk Call Manager/1.0\r\nResponse: Follows\r\nPrivilege: Command\r\nActionID: 7\r\nline one\n\nline three\n--END COMMAND--\r\n\r\nResponse: Pong\r\nActionID: 8\r\n\r\n",
    );
    let fs = frames(items);
    assert_eq!(fs.len(), 2);
    assert_eq!(fs[0].response(), Some("Follows"));
    assert_eq!(fs[0].action_id(), Some("7"));
    assert_eq!(fs[0].body(), Some("line one\n\nline three\n"));
    assert_eq!(fs[1].response(), Some("Pong"));
}

#[test]
fn follows_marker_glued_to_last_line() {
    let mut c = AmiCodec::client(1 << 20);
    let fs = frames(decode_all(
        &mut c,
        b"Asterisk Call Manager/1.0\r\nResponse: Follows\r\nPrivilege: Command\r\nno newline--END COMMAND--\r\n\r\n",
    ));
    assert_eq!(fs[0].body(), Some("no newline"));
    assert_eq!(fs[0].action_id(), None);
}

#[test]
fn action_id_before_response_is_found() {
    let mut c = AmiCodec::client(1 << 20);
    let fs = frames(decode_all(
        &mut c,
        b"Asterisk Call Manager/1.0\r\nActionID: 3\r\nResponse: Success\r\nNode: 2510\r\nConn: 2530 0 77 77\r\n\r\n",
    ));
    assert_eq!(fs[0].action_id(), Some("3"));
    assert_eq!(fs[0].response(), Some("Success"));
}

#[test]
fn empty_frame_is_a_lone_crlf() {
    let mut c = AmiCodec::client(1 << 20);
    let fs = frames(decode_all(
        &mut c,
        b"Asterisk Call Manager/11.0.0\r\n\r\nResponse: Success\r\n\r\n",
    ));
    assert_eq!(fs.len(), 2);
    assert!(fs[0].is_empty());
}

#[test]
fn megabyte_line_decodes() {
    let mut stream =
        b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nNode: 1999\r\nLinkedNodes: "
            .to_vec();
    let mut n = 0;
    while stream.len() < 1_100_000 {
        if n > 0 {
            stream.extend_from_slice(b", ");
        }
        stream.extend_from_slice(format!("T{}", 100000 + n).as_bytes());
        n += 1;
    }
    stream.extend_from_slice(b"\r\n\r\n");
    let mut c = AmiCodec::client(DEFAULT_MAX_FRAME_BYTES);
    let fs = frames(decode_all(&mut c, &stream));
    assert_eq!(
        fs[0].get("LinkedNodes").map(|v| v.split(", ").count()),
        Some(n)
    );
}

#[test]
fn oversized_frame_is_an_error_not_growth() {
    let mut c = AmiCodec::client(1024);
    let mut buf = BytesMut::from(&b"Asterisk Call Manager/11.0.0\r\n"[..]);
    assert!(matches!(c.decode(&mut buf), Ok(Some(Incoming::Banner(_)))));
    buf.extend_from_slice(&[b'x'; 2000]);
    assert!(matches!(
        c.decode(&mut buf),
        Err(CodecError::FrameTooLarge { limit: 1024 })
    ));
}

#[test]
fn bare_lf_banner_switches_to_lf_lines() {
    let mut c = AmiCodec::client(1 << 20);
    let fs = frames(decode_all(
        &mut c,
        b"Asterisk Call Manager/1.0\nResponse: Success\nActionID: 1\n\n",
    ));
    assert_eq!(fs[0].action_id(), Some("1"));
}

#[test]
fn server_side_reads_requests_with_bare_lf_and_no_banner() {
    let mut c = AmiCodec::server(1 << 20);
    let fs = frames(decode_all(
        &mut c,
        b"Action: Login\nUsername: admin\nSecret: x\n\nACTION: Ping\r\n\r\n",
    ));
    assert_eq!(fs.len(), 2);
    assert_eq!(fs[0].get("action"), Some("Login"));
    assert_eq!(fs[1].get("Action"), Some("Ping"));
}

#[test]
fn encoder_refuses_cr_lf_and_bad_names() {
    assert!(matches!(
        Action::new("RptStatus").and_then(|a| a.header("Node", "1999\r\nAction: Logoff")),
        Err(CodecError::InvalidHeaderValue(_))
    ));
    assert!(matches!(
        Action::new("X").and_then(|a| a.header("No de", "1")),
        Err(CodecError::InvalidHeaderName(_))
    ));
    let mut a = Action::new("RptStatus")
        .and_then(|a| a.header("Node", "1999"))
        .expect("valid");
    a.set_action_id("nx-1").expect("valid id");
    let mut dst = BytesMut::new();
    AmiCodec::client(1024).encode(&a, &mut dst).expect("encode");
    assert_eq!(
        &dst[..],
        b"Action: RptStatus\r\nNode: 1999\r\nActionID: nx-1\r\n\r\n"
    );
}

#[test]
fn redacted_hides_secrets() {
    let a = Action::new("Login")
        .and_then(|a| a.header("Username", "admin"))
        .and_then(|a| a.header("Secret", "s3cret"))
        .expect("valid");
    assert!(!a.redacted().contains("s3cret"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn sample_stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(b"Asterisk Call Manager/11.0.0\r\n");
        s.extend_from_slice(
            b"Response: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\n",
        );
        s.extend_from_slice(
            b"Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n",
        );
        s.extend_from_slice(b"Response: Success\r\nActionID: 2\r\nNode: 1999\r\nConn: 2000      192.0.2.10          1           OUT        01:15:30            ESTABLISHED         \r\nLinkedNodes: T2000, T2001\r\nVar: RPT_ALINKS=\r\nparrot_ena: 0\r\n\r\n");
        s.extend_from_slice(b"Event: RPT_TXKEYED\r\nPrivilege: call,all\r\nNode: 1999\r\nEventValue: 1\r\nLastKeyedTime: Thu Jan  1 00:00:00 1970\n\r\nLastTxKeyedTime: Thu Jan  1 00:00:00 1970\n\r\n\r\n");
        s.extend_from_slice(b"Response: Follows\r\nPrivilege: Command\r\nActionID: 7\r\nrpt xnode\n\n\nRPT_ALINKS=0\n--END COMMAND--\r\n\r\n");
        s.extend_from_slice(b"\r\n");
        s.extend_from_slice(b"ActionID: 3\r\nResponse: Success\r\nNode: 2510\r\nConn: 2530 0 77 77\r\nConn: 2000 0 -1 -1\r\n\r\n");
        s
    }

    proptest! {
        #[test]
        fn any_cut_decodes_to_the_same_frames(cuts in proptest::collection::vec(0usize..600, 0..40)) {
            let stream = sample_stream();
            let whole = decode_all(&mut AmiCodec::client(1 << 20), &stream);
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            let mut codec = AmiCodec::client(1 << 20);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([stream.len()]) {
                buf.extend_from_slice(&stream[last..p]);
                last = p;
                while let Some(item) = codec.decode(&mut buf).expect("decode") {
                    got.push(item);
                }
            }
            prop_assert_eq!(got, whole);
        }

        #[test]
        fn random_bytes_never_panic_or_outgrow_the_cap(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..30)) {
            let cap = 512;
            let mut codec = AmiCodec::client(cap);
            let mut buf = BytesMut::new();
            for chunk in chunks {
                buf.extend_from_slice(&chunk);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(_) => { buf.clear(); codec = AmiCodec::client(cap); break; }
                    }
                }
                prop_assert!(buf.len() <= cap + 300, "buffer {} past cap", buf.len());
            }
        }
    }
}
