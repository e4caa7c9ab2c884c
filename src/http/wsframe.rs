//! RFC 6455 framing for `/ws`, at the byte level: server frames are encoded once into
//! [`Bytes`] that every client shares (a server never masks, so header and payload are the
//! same for all), and a small incremental [`Decoder`] reads what a client sends.
//!
//! The decoder keeps only the bytes of the frame being read: an idle client costs an empty
//! buffer, and nothing larger than the message limit is ever buffered (a frame header
//! announcing more is refused before its payload is read).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame opcodes (RFC 6455 §5.2).
pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// Largest payload of a control frame (close, ping, pong).
const MAX_CONTROL: usize = 125;

/// One unfragmented server frame (FIN set, unmasked): header then payload.
pub(crate) fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(0x80 | (opcode & 0x0F));
    let n = payload.len();
    if n <= 125 {
        out.put_u8(n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.put_u8(126);
        out.put_u16(n as u16);
    } else {
        out.put_u8(127);
        out.put_u64(n as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// A text frame.
pub(crate) fn text(payload: &str) -> Bytes {
    encode(OP_TEXT, payload.as_bytes())
}

/// A close frame with a status code and a reason (cut to fit a control frame, on a
/// character boundary).
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OP_CLOSE, &payload)
}

/// A protocol ping with an empty payload.
pub(crate) fn ping() -> Bytes {
    Bytes::from_static(&[0x80 | OP_PING, 0])
}

/// A protocol pong echoing `payload` (at most 125 bytes, as the ping's).
pub(crate) fn pong(payload: &[u8]) -> Bytes {
    encode(OP_PONG, &payload[..payload.len().min(MAX_CONTROL)])
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    Text(Bytes),
    Binary,
    Ping(Bytes),
    Pong,
    /// The close code the client sent (1005 "no status" when it sent none).
    Close(u16),
}

/// Why the client's bytes cannot be read further.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A message (or a frame of one) over the limit: close 1009.
    TooBig,
    /// Anything else RFC 6455 forbids (unmasked, reserved bits or opcodes, a fragmented or
    /// oversized control frame, a stray continuation, text that is not UTF-8): close 1002.
    Protocol(&'static str),
}

/// Reads client frames from the bytes given to it.
pub(crate) struct Decoder {
    buf: BytesMut,
    /// The message being reassembled from fragments: its opcode and bytes so far.
    partial: Option<(u8, BytesMut)>,
    max_message: usize,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: usize,
    /// Header bytes, mask key included.
    size: usize,
}

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            partial: None,
            max_message,
        }
    }

    /// Bytes received from the client, not yet decoded.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read into (with at least `room` bytes free).
    pub fn read_buf(&mut self, room: usize) -> &mut BytesMut {
        self.buf.reserve(room);
        &mut self.buf
    }

    /// Lets go of a large buffer once it is empty (after a big message), so an idle
    /// client keeps only a small one.
    pub fn shrink(&mut self, keep: usize) {
        if self.buf.is_empty() && self.buf.capacity() > keep {
            self.buf = BytesMut::new();
        }
    }

    /// The next complete message or control frame, `None` if more bytes are needed.
    pub fn next(&mut self) -> Result<Option<Inbound>, DecodeError> {
        loop {
            let Some(h) = self.header()? else {
                return Ok(None);
            };
            if self.buf.len() < h.size + h.len {
                // Room for the rest of this frame, at once.
                self.buf.reserve(h.size + h.len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(h.size);
            let mut payload = self.buf.split_to(h.len);
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= h.mask[i & 3];
            }
            if let Some(msg) = self.frame(&h, payload)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Parses the header at the front of the buffer, if it is all there.
    fn header(&self) -> Result<Option<Header>, DecodeError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[0] & 0x70 != 0 {
            return Err(DecodeError::Protocol("reserved bits set"));
        }
        if b[1] & 0x80 == 0 {
            return Err(DecodeError::Protocol("unmasked client frame"));
        }
        let (len, at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        let opcode = b[0] & 0x0F;
        if opcode >= 0x8 && (len > MAX_CONTROL as u64 || b[0] & 0x80 == 0) {
            return Err(DecodeError::Protocol(
                "control frame fragmented or over 125 bytes",
            ));
        }
        let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len()) as u64;
        if len.saturating_add(so_far) > self.max_message as u64 {
            return Err(DecodeError::TooBig);
        }
        if b.len() < at + 4 {
            return Ok(None);
        }
        Ok(Some(Header {
            fin: b[0] & 0x80 != 0,
            opcode,
            mask: [b[at], b[at + 1], b[at + 2], b[at + 3]],
            len: len as usize,
            size: at + 4,
        }))
    }

    /// One unmasked frame: a message when it completes one.
    fn frame(&mut self, h: &Header, payload: BytesMut) -> Result<Option<Inbound>, DecodeError> {
        match h.opcode {
            OP_CLOSE => {
                let code = match payload.len() {
                    0 => 1005,
                    1 => return Err(DecodeError::Protocol("close frame of one byte")),
                    _ => u16::from_be_bytes([payload[0], payload[1]]),
                };
                Ok(Some(Inbound::Close(code)))
            }
            OP_PING => Ok(Some(Inbound::Ping(payload.freeze()))),
            OP_PONG => Ok(Some(Inbound::Pong)),
            OP_TEXT | OP_BINARY if self.partial.is_some() => {
                Err(DecodeError::Protocol("new message inside a fragmented one"))
            }
            OP_TEXT | OP_BINARY if !h.fin => {
                self.partial = Some((h.opcode, payload));
                Ok(None)
            }
            OP_TEXT | OP_BINARY => finish(h.opcode, payload),
            OP_CONTINUATION => {
                let Some((op, mut so_far)) = self.partial.take() else {
                    return Err(DecodeError::Protocol("continuation without a message"));
                };
                so_far.extend_from_slice(&payload);
                if h.fin {
                    finish(op, so_far)
                } else {
                    self.partial = Some((op, so_far));
                    Ok(None)
                }
            }
            _ => Err(DecodeError::Protocol("reserved opcode")),
        }
    }
}

/// A whole data message.
fn finish(opcode: u8, payload: BytesMut) -> Result<Option<Inbound>, DecodeError> {
    if opcode == OP_BINARY {
        return Ok(Some(Inbound::Binary));
    }
    if simdutf8::basic::from_utf8(&payload).is_err() {
        return Err(DecodeError::Protocol("text message is not UTF-8"));
    }
    Ok(Some(Inbound::Text(payload.freeze())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as a browser sends it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let n = payload.len();
        if n <= 125 {
            out.push(0x80 | n as u8);
        } else if n <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        out
    }

    #[test]
    fn header_lengths_switch_at_the_rfc_boundaries() {
        for (n, header) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let payload = vec![b'x'; n];
            let f = encode(OP_TEXT, &payload);
            assert_eq!(f.len(), header + n, "payload {n}");
            assert_eq!(f[0], 0x81, "FIN + text");
            assert_eq!(f[1] & 0x80, 0, "server frames are not masked");
            match header {
                2 => assert_eq!(usize::from(f[1]), n),
                4 => {
                    assert_eq!(f[1], 126);
                    assert_eq!(usize::from(u16::from_be_bytes([f[2], f[3]])), n);
                }
                _ => {
                    assert_eq!(f[1], 127);
                    let mut len = [0u8; 8];
                    len.copy_from_slice(&f[2..10]);
                    assert_eq!(u64::from_be_bytes(len), n as u64);
                }
            }
            assert!(f[header..].iter().all(|b| *b == b'x'));
        }
    }

    #[test]
    fn frames_read_back_through_tungstenite() {
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        for n in [0usize, 125, 126, 65535, 65536] {
            let text_payload = "y".repeat(n);
            let f = text(&text_payload);
            let mut cursor = std::io::Cursor::new(&f[..]);
            let (h, len) = FrameHeader::parse(&mut cursor)
                .expect("parses")
                .expect("complete");
            assert!(h.is_final && h.mask.is_none());
            assert_eq!(len, n as u64);
        }
    }

    #[test]
    fn close_frames_carry_the_code_and_a_short_reason() {
        let f = close(1009, "message too big");
        assert_eq!(f[0], 0x88);
        assert_eq!(&f[2..4], &1009u16.to_be_bytes());
        assert_eq!(&f[4..], b"message too big");
        let long = "é".repeat(200);
        let f = close(1001, &long);
        assert!(f.len() <= 2 + 125);
        assert!(
            std::str::from_utf8(&f[4..]).is_ok(),
            "cut on a char boundary"
        );
        assert_eq!(&ping()[..], &[0x89, 0]);
        assert_eq!(&pong(b"hi")[..], &[0x8A, 2, b'h', b'i']);
    }

    #[test]
    fn decoder_reads_masked_frames_split_anywhere() {
        let mut wire = client_frame(true, OP_TEXT, br#"{"type":"ping"}"#);
        wire.extend(client_frame(true, OP_PING, b"p"));
        wire.extend(client_frame(false, OP_TEXT, b"ab"));
        wire.extend(client_frame(true, OP_PONG, b""));
        wire.extend(client_frame(true, OP_CONTINUATION, b"cd"));
        wire.extend(client_frame(true, OP_BINARY, &[1, 2, 3]));
        wire.extend(client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
        let mut d = Decoder::new(1024);
        let mut got = Vec::new();
        for b in &wire {
            d.extend(std::slice::from_ref(b));
            while let Some(m) = d.next().expect("valid") {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![
                Inbound::Text(Bytes::from_static(br#"{"type":"ping"}"#)),
                Inbound::Ping(Bytes::from_static(b"p")),
                Inbound::Pong,
                Inbound::Text(Bytes::from_static(b"abcd")),
                Inbound::Binary,
                Inbound::Close(1000),
            ]
        );
    }

    #[test]
    fn decoder_reads_long_lengths() {
        for n in [126usize, 65535, 65536] {
            let mut d = Decoder::new(100_000);
            d.extend(&client_frame(true, OP_TEXT, &vec![b'z'; n]));
            match d.next() {
                Ok(Some(Inbound::Text(t))) => assert_eq!(t.len(), n),
                other => panic!("{n}: {other:?}"),
            }
        }
    }

    #[test]
    fn decoder_refuses_what_rfc_6455_forbids() {
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (
                client_frame(true, OP_TEXT, &[b'a'; 200]),
                DecodeError::TooBig,
            ),
            (
                {
                    let mut f = client_frame(true, OP_TEXT, b"hi");
                    f[1] &= 0x7F; // unmasked: the payload is read as a mask key
                    f
                },
                DecodeError::Protocol("unmasked client frame"),
            ),
            (
                client_frame(true, 0x3, b""),
                DecodeError::Protocol("reserved opcode"),
            ),
            (
                client_frame(false, OP_PING, b""),
                DecodeError::Protocol("control frame fragmented or over 125 bytes"),
            ),
            (
                client_frame(true, OP_CONTINUATION, b"x"),
                DecodeError::Protocol("continuation without a message"),
            ),
            (
                client_frame(true, OP_TEXT, &[0xff, 0xfe]),
                DecodeError::Protocol("text message is not UTF-8"),
            ),
            (
                {
                    let mut f = client_frame(true, OP_TEXT, b"x");
                    f[0] |= 0x40;
                    f
                },
                DecodeError::Protocol("reserved bits set"),
            ),
        ];
        for (wire, want) in cases {
            let mut d = Decoder::new(100);
            d.extend(&wire);
            assert_eq!(d.next(), Err(want));
        }
        // Fragments add up against the limit.
        let mut d = Decoder::new(100);
        d.extend(&client_frame(false, OP_TEXT, &[b'a'; 60]));
        d.extend(&client_frame(true, OP_CONTINUATION, &[b'a'; 60]));
        assert_eq!(d.next(), Err(DecodeError::TooBig));
        // A header announcing a huge frame is refused before any payload arrives.
        let mut d = Decoder::new(100);
        d.extend(&[0x81, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(d.next(), Err(DecodeError::TooBig));
    }
}
