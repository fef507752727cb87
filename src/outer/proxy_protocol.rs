//! The PROXY protocol (`outer.proxy-protocol`): a TCP load balancer (HAProxy, AWS NLB, …) opens
//! each connection with a header naming the client it came from, in text (v1) or binary (v2).
//! The header comes before anything else on the wire, TLS included.
//!
//! [`read_proxy_header`] reads it under the caller's deadline, never more than a header may
//! hold: a v1 header is at most 107 bytes, and a v2 header is read to the length it declares,
//! at most [`MAX_V2_BYTES`] (an address block and a few TLVs; a longer one is refused). The
//! parsing itself is the `ppp` crate's. Bytes read past the header (the request, or a TLS
//! ClientHello, sent in the same segment) are handed back to be read first.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The fixed part of a v2 header: the 12-byte signature, version and command, family and
/// protocol, and the 2-byte length of what follows.
const V2_FIXED_BYTES: usize = 16;

/// The longest v1 header (the protocol's own limit, CRLF included).
const V1_MAX_BYTES: usize = 107;

/// The longest v2 header accepted: the fixed part, the addresses (36 bytes for IPv6, 216 for
/// UNIX sockets) and room for the TLVs balancers add (AWS's VPC endpoint id, an SNI, a unique
/// id, TLS details).
pub const MAX_V2_BYTES: usize = V2_FIXED_BYTES + 4096;

/// What a PROXY header said, and what came after it.
#[derive(Debug)]
pub struct ProxyHeader {
    /// The client's address; `None` for `PROXY UNKNOWN`, a v2 `LOCAL` command (what
    /// balancers' own health checks send) or an address family other than IPv4 and IPv6: then
    /// the connection's own peer is the client.
    pub source: Option<SocketAddr>,
    /// Bytes read after the header, to be read before the socket again.
    pub rest: Bytes,
}

/// Why a connection had no usable PROXY header.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection closed first.
    #[error("connection closed before its PROXY header was complete")]
    Closed,
    /// Reading the socket failed.
    #[error("cannot read the PROXY header: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a PROXY header.
    #[error("no valid PROXY header: {0}")]
    Invalid(String),
    /// A v2 header declared more than [`MAX_V2_BYTES`].
    #[error("PROXY v2 header of {0} bytes exceeds the {MAX_V2_BYTES} accepted")]
    TooLong(usize),
}

/// What [`parse`] makes of the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header of `len` bytes.
    Complete {
        /// As in [`ProxyHeader::source`].
        source: Option<SocketAddr>,
        /// The header's length; what follows is not the header's.
        len: usize,
    },
    /// A valid start of a header; more bytes are needed.
    Incomplete,
    /// Not a header, whatever follows.
    Invalid(String),
}

/// Parses the start of a connection.
///
/// A v1 header is handed to the parser only once its line is complete: `ppp` judges some
/// prefixes of a valid line invalid (one that ends in the space before the destination port),
/// so a header split across TCP segments there would be refused. Until then the bytes need only
/// start like one.
pub fn parse(bytes: &[u8]) -> Parsed {
    if !bytes.is_empty() && (bytes.starts_with(V1_PREFIX) || V1_PREFIX.starts_with(bytes)) {
        return match bytes.iter().position(|&b| b == b'\n') {
            Some(end) => match parse_complete(&bytes[..=end]) {
                Parsed::Incomplete => Parsed::Invalid("PROXY v1 line does not end in CRLF".into()),
                parsed => parsed,
            },
            None if bytes.len() >= V1_MAX_BYTES => Parsed::Invalid(format!(
                "PROXY v1 header without an end in {V1_MAX_BYTES} bytes"
            )),
            None => Parsed::Incomplete,
        };
    }
    parse_complete(bytes)
}

/// How every v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";

fn parse_complete(bytes: &[u8]) -> Parsed {
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(header)) => Parsed::Complete {
            source: match header.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => None,
            },
            len: header.header.len(),
        },
        HeaderResult::V2(Ok(header)) => Parsed::Complete {
            source: match (header.command, header.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (_, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            },
            len: header.len(),
        },
        HeaderResult::V1(Err(err)) => Parsed::Invalid(err.to_string()),
        HeaderResult::V2(Err(err)) => Parsed::Invalid(err.to_string()),
    }
}

/// Reads a PROXY header from the start of `stream`. No deadline is applied here: the caller
/// runs this under the connection's one deadline from accept to upgrade.
pub async fn read_proxy_header(
    stream: &mut (impl AsyncRead + Unpin),
) -> Result<ProxyHeader, ProxyHeaderError> {
    // Enough to tell the versions apart and learn a v2 header's length; then the buffer grows
    // to what the header may still need, so little is read past it.
    let mut buffer = vec![0; V2_FIXED_BYTES];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buffer[filled..]).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        filled += n;
        match parse(&buffer[..filled]) {
            Parsed::Complete { source, len } => {
                buffer.truncate(filled);
                let rest = Bytes::from(buffer).slice(len..);
                return Ok(ProxyHeader { source, rest });
            }
            Parsed::Invalid(reason) => return Err(ProxyHeaderError::Invalid(reason)),
            Parsed::Incomplete if filled < buffer.len() => {}
            Parsed::Incomplete => {
                let target = if buffer.starts_with(v2::PROTOCOL_PREFIX) {
                    V2_FIXED_BYTES + usize::from(u16::from_be_bytes([buffer[14], buffer[15]]))
                } else {
                    V1_MAX_BYTES
                };
                if target > MAX_V2_BYTES {
                    return Err(ProxyHeaderError::TooLong(target));
                }
                if target <= filled {
                    // The parser wants more than the header may hold; cannot happen with a
                    // conforming parser, but never read on unbounded.
                    return Err(ProxyHeaderError::Invalid(format!(
                        "no end within {filled} bytes"
                    )));
                }
                buffer.resize(target, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `data` in pieces of `step` bytes.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let n = self.step.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut header = v2::PROTOCOL_PREFIX.to_vec();
        header.push(command);
        header.push(family);
        let len = (addresses.len() + tlvs.len()) as u16;
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(addresses);
        header.extend_from_slice(tlvs);
        header
    }

    async fn read_in_steps(data: &[u8], step: usize) -> Result<ProxyHeader, ProxyHeaderError> {
        read_proxy_header(&mut Trickle { data, step }).await
    }

    #[tokio::test]
    async fn v1_and_v2_headers_in_any_split_give_the_source_and_the_rest() {
        let v4 = [192, 0, 2, 7, 198, 51, 100, 1, 0x12, 0x67, 0x04, 0x00];
        let mut v6 = Vec::new();
        v6.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6.extend_from_slice(&[0x12, 0x67, 0x04, 0x00]);
        let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 1024\r\n".to_vec(),
                Some("192.0.2.7:4711"),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 1024\r\n".to_vec(),
                Some("[2001:db8::7]:4711"),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), None),
            (v2(0x21, 0x11, &v4, &[]), Some("192.0.2.7:4711")),
            (v2(0x21, 0x21, &v6, &[]), Some("[2001:db8::7]:4711")),
            // A TLV (AWS's type 0xEA) after the addresses.
            (
                v2(0x21, 0x11, &v4, &[0xEA, 0, 3, 1, 2, 3]),
                Some("192.0.2.7:4711"),
            ),
            (v2(0x20, 0x00, &[], &[]), None),
            (v2(0x20, 0x11, &v4, &[]), None),
        ];
        for (header, source) in cases {
            let mut data = header.clone();
            data.extend_from_slice(b"GET / HTTP/1.1\r\n");
            for step in [1, 3, 16, 200] {
                let mut trickle = Trickle { data: &data, step };
                let read = read_proxy_header(&mut trickle).await.unwrap();
                assert_eq!(
                    read.source,
                    source.map(|s| s.parse().unwrap()),
                    "{header:?}"
                );
                // What was read past the header, then what is still unread: the request.
                let mut after = read.rest.to_vec();
                trickle.read_to_end(&mut after).await.unwrap();
                assert_eq!(
                    after, b"GET / HTTP/1.1\r\n",
                    "{header:?} in steps of {step}"
                );
            }
        }
    }

    #[tokio::test]
    async fn anything_else_is_refused_without_reading_on() {
        for data in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 4711\r\n",
            b"PROXY TCP4 999.0.2.7 198.51.100.1 4711 1024\r\n",
            b"PROXY TCP5 192.0.2.7 198.51.100.1 4711 1024\r\n",
            b"PROXY UNKNOWN\n",
            b"PROXYTCP4 192.0.2.7 198.51.100.1 4711 1024\r\n",
        ] {
            let err = read_in_steps(data, 1).await.unwrap_err();
            assert!(
                matches!(err, ProxyHeaderError::Invalid(_)),
                "{data:?}: {err}"
            );
        }
        // A v1 header that never ends stops at 107 bytes.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(
            read_in_steps(&long, 7).await,
            Err(ProxyHeaderError::Invalid(_))
        ));
        // A v2 header declaring more than the limit is refused before it is read.
        let mut huge = v2::PROTOCOL_PREFIX.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            read_in_steps(&huge, 16).await,
            Err(ProxyHeaderError::TooLong(65551))
        ));
        assert!(matches!(
            read_in_steps(b"PROXY TCP4 19", 4).await,
            Err(ProxyHeaderError::Closed)
        ));
    }
}
