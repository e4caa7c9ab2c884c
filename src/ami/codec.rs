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
//! Decoding is a single forward pass over the buffer: lines end at CRLF (bare LF only when
//! the banner itself ended in bare LF), a frame ends at an empty line. The position reached
//! is kept between calls, so bytes arriving in small pieces are never rescanned. A frame
//! larger than `max_frame_bytes` is an error (the connection is reset and the error
//! counted), never unbounded memory.

use std::ops::Range;

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default cap on one frame: far above any real XStat/LinkedNodes reply.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

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
/// The text is held once; headers are ranges into it, so decoding allocates twice per
/// frame whatever its size.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Frame {
    text: String,
    headers: Vec<(Range<u32>, Range<u32>)>,
    body: Option<Range<u32>>,
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

impl Frame {
    /// Builds a frame from headers (tests, the simulator, and pre-parsed data).
    pub fn from_headers<K: AsRef<str>, V: AsRef<str>>(headers: &[(K, V)]) -> Frame {
        let mut frame = Frame::default();
        for (k, v) in headers {
            frame.push(k.as_ref(), v.as_ref());
        }
        frame
    }

    /// Appends one header.
    pub fn push(&mut self, key: &str, value: &str) {
        let ks = self.text.len() as u32;
        self.text.push_str(key);
        let ke = self.text.len() as u32;
        self.text.push_str(value);
        let ve = self.text.len() as u32;
        self.headers.push((ks..ke, ke..ve));
    }

    /// Headers in wire order. Lines that are not `Key: Value` (such as `<NONE>`) have an
    /// empty key and the whole line as value.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.headers
            .iter()
            .map(|(k, v)| (self.slice(k), self.slice(v)))
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// True for the empty frame (a bare CRLF, e.g. a VoterStatus reply with no match).
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.body.is_none()
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
        self.get("Event")
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
        self.body.as_ref().map(|r| self.slice(r))
    }

    /// Writes the frame back in wire form (server side: the simulator, tests).
    pub fn to_wire(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + self.headers.len() * 4 + 2);
        for (k, v) in self.headers() {
            if k.is_empty() {
                out.push_str(v);
            } else {
                out.push_str(k);
                out.push_str(": ");
                out.push_str(v);
            }
            out.push_str("\r\n");
        }
        if let Some(body) = self.body() {
            out.push_str(body);
            out.push_str("--END COMMAND--\r\n");
        }
        out.push_str("\r\n");
        out
    }

    fn slice(&self, r: &Range<u32>) -> &str {
        &self.text[r.start as usize..r.end as usize]
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

/// Decoder/encoder for AMI. Use [`AmiCodec::client`] when talking to Asterisk and
/// [`AmiCodec::server`] in the simulator.
#[derive(Debug)]
pub struct AmiCodec {
    side: Side,
    max_frame: usize,
    banner_seen: bool,
    /// Lines end at a bare LF too (set when the banner ended in bare LF, or server side).
    lf_lines: bool,
    /// Resume point for the current frame: bytes before it are already split into lines.
    scan: usize,
    /// Header ranges found so far for the frame in progress (offsets into the buffer).
    partial: Vec<(Range<u32>, Range<u32>)>,
    /// Inside a legacy `Response: Follows` frame: raw body starts at this offset.
    follows_body: Option<usize>,
}

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
            partial: Vec::new(),
            follows_body: None,
        }
    }

    fn reset_frame(&mut self) {
        self.scan = 0;
        self.partial.clear();
        self.follows_body = None;
    }

    fn too_large(&mut self, buf: &BytesMut) -> Result<(), CodecError> {
        if buf.len() > self.max_frame {
            self.reset_frame();
            return Err(CodecError::FrameTooLarge {
                limit: self.max_frame,
            });
        }
        Ok(())
    }

    fn decode_banner(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        let Some(nl) = memchr::memchr(b'\n', buf) else {
            self.too_large(buf)?;
            return Ok(None);
        };
        let crlf = nl > 0 && buf[nl - 1] == b'\r';
        self.lf_lines = !crlf;
        let end = if crlf { nl - 1 } else { nl };
        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.advance(nl + 1);
        self.banner_seen = true;
        Ok(Some(Incoming::Banner(line)))
    }

    /// Finds the end of the next line starting at `from`; returns (content end, next start).
    fn next_line(&self, buf: &[u8], from: usize) -> Option<(usize, usize)> {
        let mut at = from;
        loop {
            let nl = at + memchr::memchr(b'\n', &buf[at..])?;
            if nl > from && buf[nl - 1] == b'\r' {
                return Some((nl - 1, nl + 1));
            }
            if self.lf_lines {
                return Some((nl, nl + 1));
            }
            // A bare LF inside a CRLF stream (legacy `ctime()` values): part of the line.
            at = nl + 1;
        }
    }

    /// Finishes a legacy Follows frame once `--END COMMAND--` and the blank line are in.
    fn decode_follows(
        &mut self,
        buf: &mut BytesMut,
        body_start: usize,
    ) -> Result<Option<Frame>, CodecError> {
        let from = self.scan.max(body_start);
        let finder = memchr::memmem::find(&buf[from..], END_COMMAND);
        let Some(rel) = finder else {
            // Keep a marker's worth of overlap so a marker cut between reads is found.
            self.scan = buf.len().saturating_sub(END_COMMAND.len()).max(body_start);
            self.too_large(buf)?;
            return Ok(None);
        };
        let marker = from + rel;
        let after = marker + END_COMMAND.len();
        // The marker is followed by CRLF and the blank line's CRLF.
        let mut end = after;
        for _ in 0..2 {
            match &buf[end..] {
                [] | [b'\r'] => {
                    self.scan = marker;
                    self.too_large(buf)?;
                    return Ok(None);
                }
                [b'\r', b'\n', ..] => end += 2,
                [b'\n', ..] => end += 1,
                _ => break,
            }
        }
        // `Privilege:` and `ActionID:` lines that Asterisk writes before the raw text.
        let mut at = body_start;
        for name in [&b"Privilege"[..], b"ActionID"] {
            let Some((ce, nx)) = self.next_line(&buf[..marker], at) else {
                break;
            };
            let h = split_header(&buf[at..ce], at);
            if buf[h.0.start as usize..h.0.end as usize].eq_ignore_ascii_case(name) {
                self.partial.push(h);
                at = nx;
            }
        }
        let frame = self.build(buf, end, Some(at..marker));
        Ok(Some(frame))
    }

    /// Takes `len` bytes off the buffer and turns them plus the header ranges into a frame.
    fn build(&mut self, buf: &mut BytesMut, len: usize, body: Option<Range<usize>>) -> Frame {
        let bytes = buf.split_to(len);
        let text = match std::str::from_utf8(&bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => return self.build_lossy(&bytes, body),
        };
        let headers = std::mem::take(&mut self.partial);
        let body = body.map(|r| r.start as u32..r.end as u32);
        self.reset_frame();
        let mut frame = Frame {
            text,
            headers,
            body,
        };
        strip_stray_newlines(&mut frame);
        frame
    }

    /// Rare path: bytes that are not UTF-8 (a callsign in Latin-1, line noise). Each piece
    /// is converted on its own so the ranges stay right.
    fn build_lossy(&mut self, bytes: &[u8], body: Option<Range<usize>>) -> Frame {
        let headers = std::mem::take(&mut self.partial);
        self.reset_frame();
        let mut frame = Frame::default();
        for (k, v) in headers {
            let key = String::from_utf8_lossy(&bytes[k.start as usize..k.end as usize]);
            let value = String::from_utf8_lossy(&bytes[v.start as usize..v.end as usize]);
            frame.push(&key, &value);
        }
        if let Some(b) = body {
            let s = frame.text.len() as u32;
            frame.text.push_str(&String::from_utf8_lossy(&bytes[b]));
            frame.body = Some(s..frame.text.len() as u32);
        }
        strip_stray_newlines(&mut frame);
        frame
    }
}

/// Legacy app_rpt event values end in `\n` before the CRLF: drop it from the value.
fn strip_stray_newlines(frame: &mut Frame) {
    let bytes = frame.text.as_bytes();
    for (_, v) in frame.headers.iter_mut() {
        while v.end > v.start && matches!(bytes[v.end as usize - 1], b'\n' | b'\r') {
            v.end -= 1;
        }
    }
}

/// Splits a line into a header: `Key: Value` (leading blanks of the value skipped, as
/// Asterisk does), or an empty key with the whole line when there is no `:` or the text
/// before it is not a plausible header name.
fn split_header(line: &[u8], base: usize) -> (Range<u32>, Range<u32>) {
    if let Some(colon) = memchr::memchr(b':', line) {
        let key = &line[..colon];
        if !key.is_empty()
            && key
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            let mut vs = colon + 1;
            while vs < line.len() && line[vs] == b' ' {
                vs += 1;
            }
            return (
                base as u32..(base + colon) as u32,
                (base + vs) as u32..(base + line.len()) as u32,
            );
        }
    }
    (
        base as u32..base as u32,
        base as u32..(base + line.len()) as u32,
    )
}

impl Decoder for AmiCodec {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        if !self.banner_seen && self.side == Side::Client {
            return self.decode_banner(buf);
        }
        if let Some(body_start) = self.follows_body {
            return Ok(self.decode_follows(buf, body_start)?.map(Incoming::Frame));
        }
        loop {
            let Some((content_end, next)) = self.next_line(buf, self.scan) else {
                self.too_large(buf)?;
                return Ok(None);
            };
            let start = self.scan;
            if content_end == start {
                // Empty line: the frame ends here (a lone CRLF is the empty frame).
                let frame = self.build(buf, next, None);
                return Ok(Some(Incoming::Frame(frame)));
            }
            if u32::try_from(next).is_err() {
                self.reset_frame();
                return Err(CodecError::FrameTooLarge {
                    limit: self.max_frame,
                });
            }
            let header = split_header(&buf[start..content_end], start);
            let is_follows = self.side == Side::Client
                && self.partial.len() < 2
                && buf[header.0.start as usize..header.0.end as usize]
                    .eq_ignore_ascii_case(b"Response")
                && buf[header.1.start as usize..header.1.end as usize]
                    .eq_ignore_ascii_case(b"Follows");
            self.partial.push(header);
            self.scan = next;
            if next > self.max_frame {
                self.reset_frame();
                return Err(CodecError::FrameTooLarge {
                    limit: self.max_frame,
                });
            }
            if is_follows {
                self.follows_body = Some(next);
                return Ok(self.decode_follows(buf, next)?.map(Incoming::Frame));
            }
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
