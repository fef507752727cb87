//! wspair.v1 frames: arbitrary bytes as a client frame at the node, and as any frame at the
//! client library. Parsing may refuse but never panic; a frame the library decodes encodes
//! back to the same bytes when it is DATA or ACK (JSON frames may reorder their fields); the
//! node and the library agree on which BATCHes are well formed, and on how many frames each
//! holds; a reader counting frames by their lengths alone counts what decoding finds.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wspair::v1::frame::{BATCH, BatchFrames, ClientFrame, unwrap_data};
use wspair_client::frame::{Frame, decode_message, frames_in};

fuzz_target!(|data: &[u8]| {
    let _ = ClientFrame::parse(data);
    let _ = frames_in(data);
    if let Ok(frame) = Frame::decode(Bytes::copy_from_slice(data)) {
        let encoded = frame.encode();
        if matches!(frame, Frame::Data { .. } | Frame::Ack { .. }) {
            assert_eq!(&encoded[..], data, "DATA and ACK encode back byte for byte");
        }
        assert_eq!(Frame::decode(encoded).ok(), Some(frame), "a frame decodes to itself");
    }
    if data.first() == Some(&BATCH) {
        let node = BatchFrames::new(&data[1..])
            .and_then(|frames| frames.collect::<Result<Vec<_>, _>>())
            .map(|frames| frames.len());
        let library = decode_message(Bytes::copy_from_slice(data))
            .collect::<Result<Vec<_>, _>>()
            .map(|frames| frames.len());
        if let Ok(frames) = &library {
            assert_eq!(frames_in(data), *frames, "a reader counts a BATCH as it decodes");
        }
        assert_eq!(node.ok(), library.ok(), "the node and the library agree");
        let _ = ClientFrame::written(data, 1);
        let _ = unwrap_data::<()>(&Bytes::copy_from_slice(data), |_, _| Ok(()));
    }
});
