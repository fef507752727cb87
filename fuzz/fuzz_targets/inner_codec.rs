//! The node-to-node codec: arbitrary bytes off a link, fed in arbitrary chunks. Decoding may
//! fail (the link is then closed) but never panic, and a frame decoded must encode back.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};
use wspair::inner::codec::InnerCodec;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut codec = InnerCodec::new(16 * 1024);
    let mut buffer = BytesMut::new();
    for piece in data.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    let mut out = BytesMut::new();
                    codec.encode(frame, &mut out).expect("a decoded frame encodes");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
