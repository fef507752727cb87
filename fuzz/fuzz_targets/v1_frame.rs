//! wspair.v1 frames: arbitrary bytes as a client frame at the node, and as any frame at the
//! client library. Parsing may refuse but never panic; a frame the library decodes encodes
//! back to the same bytes when it is DATA or ACK (JSON frames may reorder their fields).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wspair_client::frame::Frame;

fuzz_target!(|data: &[u8]| {
    let _ = wspair::v1::frame::ClientFrame::parse(data);
    if let Ok(frame) = Frame::decode(bytes::Bytes::copy_from_slice(data)) {
        let encoded = frame.encode();
        if matches!(frame, Frame::Data { .. } | Frame::Ack { .. }) {
            assert_eq!(&encoded[..], data, "DATA and ACK encode back byte for byte");
        }
        assert_eq!(Frame::decode(encoded).ok(), Some(frame), "a frame decodes to itself");
    }
});
