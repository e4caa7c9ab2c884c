//! Fuzzes the AMI decoder: arbitrary bytes, fed in arbitrary pieces, must never panic,
//! and the buffer must never grow past the frame cap.
#![no_main]

use allstar_nexus::ami::codec::AmiCodec;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // First byte picks the piece size, so splits inside lines and CRLFs are explored.
    let Some((&split, rest)) = data.split_first() else { return };
    let piece = usize::from(split).max(1);
    let mut codec = AmiCodec::client(CAP);
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => {
                    buf.clear();
                    codec = AmiCodec::client(CAP);
                    break;
                }
            }
        }
        assert!(buf.len() <= CAP + piece, "buffer grew past the cap");
    }
});
