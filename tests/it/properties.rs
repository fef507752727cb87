//! Properties over many generated inputs (proptest): the inner codec round-trips any data
//! frame, wspair.v1 varints have exactly one encoding per value, and the checks before an
//! upgrade never panic and accept exactly the valid queries. Behind a proxy: a PROXY header
//! reads the same however it is split, and the client a forwarded header names is the
//! right-most untrusted hop, whatever a client wrote to the left of it. The credit ledger's
//! invariant is a property test beside it (`src/credit.rs`).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use std::net::{IpAddr, SocketAddr};
use tokio_util::codec::{Decoder, Encoder};
use wspair::inner::codec::InnerCodec;
use wspair::inner::frame::InnerFrame;

use wspair::outer::forwarded::{ForwardedHeader, TrustedProxies, client_address};
use wspair::outer::handshake::parse_query;
use wspair::outer::proxy_protocol::{self, Parsed};
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

    #[test]
    fn the_proxy_header_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Parsed::Complete { len, .. } = proxy_protocol::parse(&bytes) {
            prop_assert!(len <= bytes.len());
        }
    }

    #[test]
    fn a_proxy_header_is_incomplete_at_every_split_and_names_its_source_when_whole(
        source in socket_addr(),
        binary in any::<bool>(),
        after in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let header = proxy_header(source, binary);
        for end in 0..header.len() {
            prop_assert_eq!(proxy_protocol::parse(&header[..end]), Parsed::Incomplete, "{}", end);
        }
        let mut whole = header.clone();
        whole.extend_from_slice(&after);
        prop_assert_eq!(
            proxy_protocol::parse(&whole),
            Parsed::Complete { source: Some(source), len: header.len() }
        );
    }

    #[test]
    fn the_forwarded_walk_never_panics(
        values in proptest::collection::vec("[ -~]{0,60}", 0..4),
        forwarded in any::<bool>(),
    ) {
        let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        let header = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
        let _ = client_address(header, &values, peer(), &trusted());
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_hop_whatever_the_client_wrote(
        hops in proptest::collection::vec((any::<bool>(), any::<u8>()), 0..6),
        spoofed in "[ -~&&[^,]]{0,20}",
        forwarded in any::<bool>(),
    ) {
        // A trusted hop is in 10.0.0.0/8, an untrusted one in 203.0.113.0/24.
        let addresses: Vec<IpAddr> = hops
            .iter()
            .map(|&(is_trusted, n)| if is_trusted { IpAddr::from([10, 0, 0, n]) } else { IpAddr::from([203, 0, 113, n]) })
            .collect();
        let expected = match addresses.iter().rposition(|ip| ip.to_string().starts_with("203.")) {
            Some(at) => Some(addresses[at]),
            None => addresses.first().copied(),
        };
        let entry = |ip: &IpAddr| if forwarded { format!("for={ip}") } else { ip.to_string() };
        let mut list: Vec<String> = addresses.iter().map(entry).collect();
        // Whatever a client puts first is left of an untrusted hop, or of nothing trusted wrote.
        let has_untrusted = expected.is_some_and(|ip| ip.to_string().starts_with("203."));
        if has_untrusted {
            list.insert(0, spoofed);
        }
        let value = list.join(", ");
        let values: Vec<&[u8]> = if list.is_empty() { vec![] } else { vec![value.as_bytes()] };
        let header = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
        let client = client_address(header, &values, peer(), &trusted()).unwrap();
        prop_assert_eq!(client, expected.map_or(peer(), |ip| SocketAddr::new(ip, 0)));
    }
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

/// A PROXY header naming `source`, in v2 (`binary`) or v1.
fn proxy_header(source: SocketAddr, binary: bool) -> Vec<u8> {
    if !binary {
        let (family, destination) = if source.is_ipv4() {
            ("TCP4", "127.0.0.1")
        } else {
            ("TCP6", "::1")
        };
        return format!(
            "PROXY {family} {} {destination} {} 1024\r\n",
            source.ip(),
            source.port()
        )
        .into_bytes();
    }
    let mut header = b"\r\n\r\n\x00\r\nQUIT\n\x21".to_vec();
    let mut body = Vec::new();
    match source {
        SocketAddr::V4(v4) => {
            header.push(0x11);
            body.extend_from_slice(&v4.ip().octets());
            body.extend_from_slice(&[127, 0, 0, 1]);
        }
        SocketAddr::V6(v6) => {
            header.push(0x21);
            body.extend_from_slice(&v6.ip().octets());
            body.extend_from_slice(&[0; 15]);
            body.push(1);
        }
    }
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&1024u16.to_be_bytes());
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(&body);
    header
}

fn peer() -> SocketAddr {
    "10.0.0.1:40000".parse().unwrap()
}

fn trusted() -> TrustedProxies {
    TrustedProxies::parse(["10.0.0.0/8"]).unwrap()
}
