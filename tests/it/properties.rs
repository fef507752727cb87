//! Properties over many generated inputs (proptest): the inner codec round-trips any data
//! frame, wspair.v1 varints have exactly one encoding per value, and the checks before an
//! upgrade never panic and accept exactly the valid queries. The credit ledger's invariant is
//! a property test beside it (`src/credit.rs`).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};
use wspair::inner::codec::InnerCodec;
use wspair::inner::frame::InnerFrame;
use wspair::outer::handshake::parse_query;
use wspair::{ChannelId, Role};

const ID_CHARS: &str = "[A-Za-z0-9_]{32}";

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::App), Just(Role::Web)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_inner_codec_round_trips_any_data_frame(
        id in ID_CHARS,
        role in role(),
        sender in any::<u64>(),
        receiver in any::<u64>(),
        seq in any::<u64>(),
        text in any::<bool>(),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
        split in 0usize..64,
    ) {
        let frame = InnerFrame::Data {
            channel_id: id.parse::<ChannelId>().unwrap(),
            role,
            sender,
            receiver,
            seq,
            kind: if text { wspair::pair::MessageKind::Text } else { wspair::pair::MessageKind::Binary },
            payload: Bytes::from(payload),
        };
        let mut codec = InnerCodec::new(4096);
        let mut wire = BytesMut::new();
        codec.encode(frame.clone(), &mut wire).unwrap();
        // Arriving in two pieces changes nothing.
        let split = split.min(wire.len());
        let mut buffer = BytesMut::from(&wire[..split]);
        let first = codec.decode(&mut buffer).unwrap();
        buffer.extend_from_slice(&wire[split..]);
        let decoded = match first {
            Some(decoded) => decoded,
            None => codec.decode(&mut buffer).unwrap().expect("a whole frame decodes"),
        };
        prop_assert_eq!(decoded, frame);
        prop_assert!(buffer.is_empty());
    }

    #[test]
    fn every_varint_value_has_one_encoding(value in any::<u64>(), extra in 1usize..3) {
        let mut wire = BytesMut::new();
        wspair::v1::frame::put_varint(&mut wire, value);
        prop_assert_eq!(wspair::v1::frame::read_varint(&wire), Ok((value, wire.len())));
        // The same value with zero continuation bytes added is refused.
        let mut longer = wire.to_vec();
        let last = longer.len() - 1;
        longer[last] |= 0x80;
        longer.extend(std::iter::repeat_n(0x80, extra - 1));
        longer.push(0x00);
        if longer.len() <= 10 {
            prop_assert!(wspair::v1::frame::read_varint(&longer).is_err());
        }
    }

    #[test]
    fn client_frames_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = wspair::v1::frame::ClientFrame::parse(&bytes);
    }

    #[test]
    fn query_parsing_never_panics(query in ".{0,200}") {
        let _ = parse_query(&query);
    }

    #[test]
    fn a_query_is_accepted_exactly_when_its_role_and_id_are_valid(
        role in "(app|web|APP|phone|)",
        id in "[A-Za-z0-9_\\-]{30,34}",
        extra in "(&x=1|&other=%20y|)",
    ) {
        let query = format!("type={role}&channelId={id}{extra}");
        let valid = (role == "app" || role == "web")
            && id.len() == 32
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        prop_assert_eq!(parse_query(&query).is_ok(), valid, "{}", query);
    }
}
