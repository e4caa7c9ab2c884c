//! The AMI wire codec: bytes from Asterisk into [`Incoming`] (banner or [`Frame`]), and
//! [`Action`]s back into bytes.
//!
//! Written by hand because no crate handles the quirks documented in
//! `shared/reference/ami-app-rpt.md` §1: the one-line banner with no blank line after it,
//! ordered and repeated keys (`Conn`, `Var`, `Output`), empty values, non `Key: Value`
//! lines (`<NONE>`, XML), the legacy `Response: Follows … --END COMMAND--` block that may
//! contain blank lines, legacy event values ending in a stray `\n` before the CRLF, and
//! lines of hundreds of KB.
//!
//! Decoding finds the end of a frame with one SIMD scan for the empty line (`\r\n\r\n`;
//! a legacy `\n\r\n` inside a line is not one) and copies the frame once; headers are
//! split when read. Lines end at CRLF (bare LF only when the banner itself ended in bare
//! LF, or on the server side). The position reached is kept between calls, so bytes
//! arriving in small pieces are never rescanned. A frame larger than `max_frame_bytes` is
//! an error (the connection is reset and the error counted), never unbounded memory.

use std::sync::LazyLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default cap on one frame: far above any real XStat/LinkedNodes reply.
pub const DEFAULT_MAX_FRAME_BYTES: usize = crate::config::DEFAULT_AMI_MAX_FRAME_BYTES;

/// The marker that ends a legacy (Asterisk ≤ 13) `Response: Follows` block.
const END_COMMAND: &[u8] = b"--END COMMAND--";

/// Errors from decoding or encoding AMI bytes.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("AMI frame exceeds {limit} bytes without ending (protocol error; connection reset)")]
    FrameTooLarge { limit: usize },
    #[error("invalid AMI header name {0:?}: only letters, digits, '-' and '_' are allowed")]
    InvalidHeaderName(String),
    #[error("invalid value for AMI header {0}: CR and LF are not allowed")]
    InvalidHeaderValue(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// One decoded unit from an AMI server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The first line of the session, e.g. `Asterisk Call Manager/11.0.0`.
    Banner(String),
    /// A frame: a reply, an event, or a client request (server side).
    Frame(Frame),
}

/// One AMI frame: ordered `Key: Value` headers (duplicates kept in order), plus, for a
/// legacy `Response: Follows` reply, the raw command output.
///
/// The frame keeps its wire text (every line ending in CRLF) and splits it into headers
/// when asked, so decoding is one scan for the blank line and one copy, whatever the
/// frame holds. Values lose their leading blanks (as Asterisk reads them) and a legacy
/// trailing `\n`; lines that are not `Key: Value` (`<NONE>`, XML) come back with an empty
/// key and the whole line as value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Frame {
    text: Text,
    body: Option<String>,
}

/// Frame text, shared with the read buffer it was decoded from (no copy).
/// Invariant: always valid UTF-8 — every constructor validates or starts from a `String`.
#[derive(Clone, PartialEq, Eq, Default)]
struct Text(Bytes);

impl Text {
    /// Takes decoded bytes; bytes that are not UTF-8 (a Latin-1 callsign, line noise) are
    /// replaced, which keeps the CRLF structure.
    fn from_bytes(b: Bytes) -> Text {
        // SIMD validation: several times faster than std's on long replies.
        if simdutf8::basic::from_utf8(&b).is_ok() {
            Text(b)
        } else {
            Text(Bytes::from(String::from_utf8_lossy(&b).into_owned()))
        }
    }

    fn as_str(&self) -> &str {
        // SAFETY: `Text` is only built from validated bytes (`from_bytes`) or from a
        // `String` (`From<String>`), so the bytes are valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Bytes::from(s))
    }
}

fn push_line(text: &mut String, key: &str, value: &str) {
    if !key.is_empty() {
        text.push_str(key);
        text.push_str(": ");
    }
    text.push_str(value);
    text.push_str("\r\n");
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for (k, v) in self.headers() {
            list.entry(&format_args!("{k}: {v}"));
        }
        if let Some(body) = self.body() {
            list.entry(&format_args!("<body {} bytes>", body.len()));
        }
        list.finish()
    }
}

/// Iterator over a frame's header lines.
pub struct Headers<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        let bytes = self.text.as_bytes();
        if self.pos >= bytes.len() {
            return None;
        }
        let start = self.pos;
        let (end, next) = crlf_line_end(bytes, start).unwrap_or((bytes.len(), bytes.len()));
        self.pos = next;
        Some(split_header(&self.text[start..end]))
    }
}

/// End of the CRLF-terminated line starting at `from` (a bare LF inside is part of it):
/// (content end, next line start).
fn crlf_line_end(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    loop {
        let nl = at + memchr::memchr(b'\n', &bytes[at..])?;
        if nl > from && bytes[nl - 1] == b'\r' {
            return Some((nl - 1, nl + 1));
        }
        at = nl + 1;
    }
}

/// Splits a line into a header: `Key: Value` (leading blanks of the value skipped, as
/// Asterisk does; a legacy trailing `\n` dropped), or an empty key with the whole line
/// when there is no `:` or the text before it is not a plausible header name.
fn split_header(line: &str) -> (&str, &str) {
    let b = line.as_bytes();
    if let Some(colon) = memchr::memchr(b':', b) {
        let key = &b[..colon];
        if !key.is_empty()
            && key
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            let value = line[colon + 1..]
                .trim_start_matches(' ')
                .trim_end_matches(['\n', '\r']);
            return (&line[..colon], value);
        }
    }
    ("", line.trim_end_matches(['\n', '\r']))
}

impl Frame {
    /// Builds a frame from headers (tests, the simulator, and pre-parsed data).
    pub fn from_headers<K: AsRef<str>, V: AsRef<str>>(headers: &[(K, V)]) -> Frame {
        let mut text = String::new();
        for (k, v) in headers {
            push_line(&mut text, k.as_ref(), v.as_ref());
        }
        Frame {
            text: text.into(),
            body: None,
        }
    }

    /// Appends one header (an empty key appends `value` as a bare line).
    pub fn push(&mut self, key: &str, value: &str) {
        let mut text = self.text.as_str().to_owned();
        push_line(&mut text, key, value);
        self.text = text.into();
    }

    /// Headers in wire order.
    pub fn headers(&self) -> Headers<'_> {
        Headers {
            text: self.text.as_str(),
            pos: 0,
        }
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.headers().count()
    }

    /// True for the empty frame (a bare CRLF, e.g. a VoterStatus reply with no match).
    pub fn is_empty(&self) -> bool {
        self.text.0.is_empty() && self.body.is_none()
    }

    /// The first value of `key` (ASCII case-insensitive, as Asterisk matches headers).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.headers()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    /// The `Event:` name, when this frame is an event.
    pub fn event(&self) -> Option<&str> {
        // Asterisk writes `Event:` first; fall back to a scan for hand-built frames.
        match self.headers().next() {
            Some((k, v)) if k.eq_ignore_ascii_case("Event") => Some(v),
            Some((k, _))
                if k.eq_ignore_ascii_case("Response") || k.eq_ignore_ascii_case("ActionID") =>
            {
                None
            }
            _ => self.get("Event"),
        }
    }

    /// The `Response:` value (`Success`, `Error`, `Follows`, `Goodbye`, `Pong`).
    pub fn response(&self) -> Option<&str> {
        self.get("Response")
    }

    /// The echoed `ActionID:`.
    pub fn action_id(&self) -> Option<&str> {
        self.get("ActionID")
    }

    /// The raw output of a legacy `Response: Follows` block (without `--END COMMAND--`).
    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }

    /// Writes the frame back in wire form (server side: the simulator, tests).
    pub fn to_wire(&self) -> String {
        let body = self
            .body
            .as_deref()
            .map_or(0, |b| b.len() + END_COMMAND.len() + 2);
        let mut out = String::with_capacity(self.text.0.len() + body + 2);
        out.push_str(self.text.as_str());
        if let Some(b) = &self.body {
            out.push_str(b);
            out.push_str("--END COMMAND--\r\n");
        }
        out.push_str("\r\n");
        out
    }
}

/// Which side of the session the decoder serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Reading what Asterisk sends: a banner first.
    Client,
    /// Reading what a client sends (the simulator): no banner, bare LF accepted like
    /// Asterisk ≥ 1.8 does.
    Server,
}

/// What the frame being read turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Not known until its first line is in.
    Unknown,
    /// Ends at the first empty line.
    Plain,
    /// Legacy `Response: Follows`: ends after `--END COMMAND--`.
    Follows,
}

/// Decoder/encoder for AMI. Use [`AmiCodec::client`] when talking to Asterisk and
/// [`AmiCodec::server`] in the simulator.
#[derive(Debug)]
pub struct AmiCodec {
    side: Side,
    max_frame: usize,
    banner_seen: bool,
    /// Lines end at a bare LF too (set when the banner ended in bare LF, or server side).
    lf_lines: bool,
    /// Resume point of the search in the current frame: bytes before it were scanned.
    scan: usize,
    kind: Kind,
}

/// Searchers built once per process (building one per call costs more than a small
/// frame's scan; one per codec cost 576 bytes in each of a fleet's sessions).
static BLANK_LINE: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
static END_COMMAND_FINDER: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(END_COMMAND));

impl AmiCodec {
    /// A codec for the client side of a session (reads a banner first).
    pub fn client(max_frame: usize) -> AmiCodec {
        AmiCodec::new(Side::Client, max_frame)
    }

    /// A codec for the server side of a session (the simulator).
    pub fn server(max_frame: usize) -> AmiCodec {
        let mut c = AmiCodec::new(Side::Server, max_frame);
        c.banner_seen = true;
        c.lf_lines = true;
        c
    }

    fn new(side: Side, max_frame: usize) -> AmiCodec {
        AmiCodec {
            side,
            max_frame: max_frame.max(64),
            banner_seen: false,
            lf_lines: false,
            scan: 0,
            kind: Kind::Unknown,
        }
    }

    fn reset_frame(&mut self) {
        self.scan = 0;
        self.kind = Kind::Unknown;
    }

    /// Nothing complete yet: fine unless the pending bytes exceed the cap.
    fn incomplete(&mut self, buf: &BytesMut) -> Result<Option<Incoming>, CodecError> {
        if buf.len() > self.max_frame {
            self.reset_frame();
            return Err(CodecError::FrameTooLarge {
                limit: self.max_frame,
            });
        }
        Ok(None)
    }

    fn decode_banner(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        let Some(nl) = memchr::memchr(b'\n', buf) else {
            return self.incomplete(buf);
        };
        let crlf = nl > 0 && buf[nl - 1] == b'\r';
        self.lf_lines = !crlf;
        let end = if crlf { nl - 1 } else { nl };
        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.advance(nl + 1);
        self.banner_seen = true;
        Ok(Some(Incoming::Banner(line)))
    }

    /// Looks at the first line(s) to tell a legacy Follows block from a plain frame.
    fn classify(&mut self, buf: &BytesMut) -> Option<Kind> {
        // Only `Response:` or `ActionID:` can open a Follows block; events never do.
        if !matches!(buf.first()? | 0x20, b'r' | b'a') {
            return Some(Kind::Plain);
        }
        let (e1, n1) = crlf_line_end(buf, 0)?;
        let is_follows = |line: &[u8]| {
            let (k, v) = match memchr::memchr(b':', line) {
                Some(c) => (&line[..c], line[c + 1..].trim_ascii()),
                None => return false,
            };
            k.eq_ignore_ascii_case(b"Response") && v.eq_ignore_ascii_case(b"Follows")
        };
        let first = &buf[..e1];
        if is_follows(first) {
            return Some(Kind::Follows);
        }
        if first.len() >= 9 && first[..9].eq_ignore_ascii_case(b"ActionID:") {
            let (e2, _) = crlf_line_end(buf, n1)?;
            if is_follows(&buf[n1..e2]) {
                return Some(Kind::Follows);
            }
        }
        Some(Kind::Plain)
    }

    /// A plain frame: everything up to the first empty line.
    fn decode_plain(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        let Some(rel) = BLANK_LINE.find(&buf[self.scan..]) else {
            self.scan = buf.len().saturating_sub(3);
            return self.incomplete(buf);
        };
        let end = self.scan + rel;
        if end + 4 > self.max_frame {
            self.reset_frame();
            return Err(CodecError::FrameTooLarge {
                limit: self.max_frame,
            });
        }
        let bytes = buf.split_to(end + 4);
        self.reset_frame();
        Ok(Some(Incoming::Frame(Frame {
            text: Text::from_bytes(bytes.freeze().slice(..end + 2)),
            body: None,
        })))
    }

    /// A legacy Follows frame: header lines, raw text, `--END COMMAND--`, blank line.
    fn decode_follows(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        let Some(rel) = END_COMMAND_FINDER.find(&buf[self.scan..]) else {
            // Keep a marker's worth of overlap so a marker cut between reads is found.
            self.scan = buf.len().saturating_sub(END_COMMAND.len());
            return self.incomplete(buf);
        };
        let marker = self.scan + rel;
        // The marker is followed by CRLF and the blank line's CRLF.
        let mut end = marker + END_COMMAND.len();
        for _ in 0..2 {
            match &buf[end..] {
                [] | [b'\r'] => {
                    self.scan = marker;
                    return self.incomplete(buf);
                }
                [b'\r', b'\n', ..] => end += 2,
                [b'\n', ..] => end += 1,
                _ => break,
            }
        }
        // `Response:`, then the `Privilege:` and `ActionID:` lines Asterisk writes before
        // the raw text (ActionID may come first in old versions).
        let mut headers_end = 0;
        for _ in 0..3 {
            let Some((e, n)) = crlf_line_end(&buf[..marker], headers_end) else {
                break;
            };
            let line = &buf[headers_end..e];
            let known = [&b"Response:"[..], b"Privilege:", b"ActionID:"]
                .iter()
                .any(|p| line.len() >= p.len() && line[..p.len()].eq_ignore_ascii_case(p));
            if !known {
                break;
            }
            headers_end = n;
        }
        let bytes = buf.split_to(end);
        self.reset_frame();
        let frame = Frame {
            text: Text::from_bytes(bytes.clone().freeze().slice(..headers_end)),
            body: Some(
                Text::from_bytes(bytes.freeze().slice(headers_end..marker))
                    .as_str()
                    .to_owned(),
            ),
        };
        Ok(Some(Incoming::Frame(frame)))
    }

    /// Bare-LF framing (server side, or a server whose banner ended in LF): line by line,
    /// normalised to CRLF in the frame.
    fn decode_lf(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        let mut at = self.scan;
        loop {
            let Some(rel) = memchr::memchr(b'\n', &buf[at..]) else {
                self.scan = at;
                return self.incomplete(buf);
            };
            let nl = at + rel;
            let line = &buf[at..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                let bytes = buf.split_to(nl + 1);
                self.reset_frame();
                let mut text = String::with_capacity(at + 16);
                for raw in bytes[..at].split(|b| *b == b'\n') {
                    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                    if !raw.is_empty() {
                        text.push_str(&String::from_utf8_lossy(raw));
                        text.push_str("\r\n");
                    }
                }
                return Ok(Some(Incoming::Frame(Frame {
                    text: text.into(),
                    body: None,
                })));
            }
            at = nl + 1;
            if at > self.max_frame {
                self.reset_frame();
                return Err(CodecError::FrameTooLarge {
                    limit: self.max_frame,
                });
            }
        }
    }
}

impl Decoder for AmiCodec {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        if !self.banner_seen && self.side == Side::Client {
            return self.decode_banner(buf);
        }
        if self.lf_lines {
            return self.decode_lf(buf);
        }
        if self.kind == Kind::Unknown {
            if buf.starts_with(b"\r\n") {
                // A lone CRLF is the empty frame.
                buf.advance(2);
                return Ok(Some(Incoming::Frame(Frame::default())));
            }
            match self.classify(buf) {
                Some(k) => self.kind = k,
                None => return self.incomplete(buf),
            }
        }
        match self.kind {
            Kind::Follows => self.decode_follows(buf),
            _ => self.decode_plain(buf),
        }
    }
}

/// An action to send to Asterisk: ordered headers whose names and values were checked
/// when added, so encoding cannot inject a second header or action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    headers: Vec<(String, String)>,
}

impl Action {
    /// Starts an action (`Action: <name>`).
    pub fn new(name: &str) -> Result<Action, CodecError> {
        Action {
            headers: Vec::new(),
        }
        .header("Action", name)
    }

    /// Adds a header after validating it: names are `[A-Za-z0-9_-]+`, values carry no CR
    /// or LF.
    pub fn header(mut self, key: &str, value: &str) -> Result<Action, CodecError> {
        validate_header(key, value)?;
        self.headers.push((key.to_owned(), value.to_owned()));
        Ok(self)
    }

    /// The action name.
    pub fn name(&self) -> &str {
        self.headers.first().map(|(_, v)| v.as_str()).unwrap_or("")
    }

    /// The first value of a header.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or replaces) the `ActionID` header.
    pub fn set_action_id(&mut self, id: &str) -> Result<(), CodecError> {
        validate_header("ActionID", id)?;
        self.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("ActionID"));
        self.headers.push(("ActionID".to_owned(), id.to_owned()));
        Ok(())
    }

    /// Headers in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A copy safe to log: secrets replaced.
    pub fn redacted(&self) -> String {
        self.headers
            .iter()
            .map(|(k, v)| {
                if k.eq_ignore_ascii_case("Secret") || k.eq_ignore_ascii_case("Key") {
                    format!("{k}: ********")
                } else {
                    format!("{k}: {v}")
                }
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

fn validate_header(key: &str, value: &str) -> Result<(), CodecError> {
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CodecError::InvalidHeaderName(key.to_owned()));
    }
    if value.contains(['\r', '\n']) {
        return Err(CodecError::InvalidHeaderValue(key.to_owned()));
    }
    Ok(())
}

impl Encoder<&Action> for AmiCodec {
    type Error = CodecError;

    fn encode(&mut self, action: &Action, dst: &mut BytesMut) -> Result<(), CodecError> {
        for (k, v) in action.headers() {
            // Checked again here: this is the last line of defence before the socket.
            validate_header(k, v)?;
            dst.reserve(k.len() + v.len() + 4);
            dst.put_slice(k.as_bytes());
            dst.put_slice(b": ");
            dst.put_slice(v.as_bytes());
            dst.put_slice(b"\r\n");
        }
        dst.put_slice(b"\r\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
