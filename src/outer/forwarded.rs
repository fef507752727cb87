//! The client's address behind HTTP proxies: `outer.trusted-proxies` and the header a trusted
//! proxy names its client in (`outer.forwarded-header`: `X-Forwarded-For`, or RFC 7239's
//! `Forwarded: for=`).
//!
//! Anyone can send these headers, so they are read only from a peer in `outer.trusted-proxies`,
//! and only the part of the chain trusted proxies wrote is believed: each proxy appends the
//! address it received the request from, so walking the entries from the right, the first one
//! that is not itself a trusted proxy is the client. What a client wrote sits to the left of
//! that and is never looked at, so a spoofed left-most entry changes nothing. Reaching an entry
//! that names no address (malformed, `unknown`, an obfuscated name) means a trusted proxy wrote
//! it; the request is refused with 400 and the entry as reason, rather than counting the client
//! under some proxy's address. Only the configured header is read: a proxy that writes one
//! passes the other through from the client untouched.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Which header trusted proxies name their clients in (`outer.forwarded-header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name, as HTTP spells it.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "X-Forwarded-For",
            ForwardedHeader::Forwarded => "Forwarded",
        }
    }
}

/// `outer.trusted-proxies`: the address blocks whose connections may say who their client is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`); a bare address is a block of one
    /// (/32 or /128). The error names the entry and what is wrong with it.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match entry.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(format!(
                            "{entry:?} is not a CIDR block (10.0.0.0/8, 2001:db8::/32) or an IP address"
                        ));
                    }
                },
            };
            if net != net.trunc() {
                return Err(format!(
                    "{entry:?} has host bits set beyond its /{} prefix; did you mean {}?",
                    net.prefix_len(),
                    net.trunc()
                ));
            }
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    /// Whether no proxy is trusted (the default).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in one of the blocks. An IPv4-mapped IPv6 address (an IPv4 peer on a
    /// dual-stack socket) matches the IPv4 blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.0
            .iter()
            .any(|net| net.contains(&canonical) || net.contains(&ip))
    }
}

/// A forwarded header whose entry at the trusted end of the chain names no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{header} entry {entry:?} names no client address (outer.trusted-proxies)")]
pub struct ForwardedError {
    /// The header's name.
    pub header: &'static str,
    /// The entry, cut to [`ENTRY_SHOWN`] bytes.
    pub entry: String,
}

/// Bytes of a bad entry quoted in a refusal.
const ENTRY_SHOWN: usize = 64;

/// The client of a request that came from `peer`, a trusted proxy, carrying `values`: the
/// header's field values in the order they appear in the request (several lines make one list,
/// in order). No header at all means the peer is the client.
pub fn client_address(
    header: ForwardedHeader,
    values: &[&[u8]],
    peer: SocketAddr,
    trusted: &TrustedProxies,
) -> Result<SocketAddr, ForwardedError> {
    let mut client = peer;
    for value in values.iter().rev() {
        // Empty list elements are ignored (RFC 9110 §5.6.1): they name no one.
        for entry in split_list(value).rev().filter(|entry| !entry.is_empty()) {
            let address = match header {
                ForwardedHeader::XForwardedFor => parse_address(entry),
                ForwardedHeader::Forwarded => for_parameter(entry).and_then(parse_address),
            }
            .ok_or_else(|| ForwardedError {
                header: header.name(),
                entry: shown(entry),
            })?;
            client = address;
            if !trusted.contains(address.ip()) {
                return Ok(client);
            }
        }
    }
    // Every hop was a trusted proxy: the left-most is as far as the chain goes.
    Ok(client)
}

fn shown(entry: &[u8]) -> String {
    let entry = trim(entry);
    String::from_utf8_lossy(&entry[..entry.len().min(ENTRY_SHOWN)]).into_owned()
}

/// Splits a comma-separated list into trimmed entries, at every comma. Quoted strings are not
/// honoured on purpose: a client controls the left of the list, and an unclosed quote there
/// would otherwise swallow the entries the proxies appended after it (and with them, decide
/// which `for=` is read). The entries trusted proxies write hold no commas.
fn split_list(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |at| at + 1);
    &bytes[start..end]
}

/// The value of a `Forwarded` element's `for` parameter, unquoted; `None` without one, or
/// when the quoted string holds an escape (no address needs one). Parameters are split at every
/// `;`, for the same reason as entries at every comma.
fn for_parameter(element: &[u8]) -> Option<&[u8]> {
    let value = element.split(|&b| b == b';').find_map(|pair| {
        let (name, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        trim(name)
            .eq_ignore_ascii_case(b"for")
            .then(|| trim(&value[1..]))
    })?;
    match value {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') && !inner.contains(&b'"') => {
            Some(inner)
        }
        [b'"', ..] | [.., b'"'] => None,
        plain => Some(plain),
    }
}

/// An address as proxies write it: `192.0.2.7`, `192.0.2.7:4711`, `2001:db8::7`,
/// `[2001:db8::7]` or `[2001:db8::7]:4711`; port 0 when none is given.
pub fn parse_address(text: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(trim(text)).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Some(address);
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|ip| SocketAddr::new(ip.into(), 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(blocks.iter().copied()).unwrap()
    }

    fn peer() -> SocketAddr {
        "10.0.0.5:40000".parse().unwrap()
    }

    fn xff(values: &[&str], trusted: &TrustedProxies) -> Result<SocketAddr, ForwardedError> {
        let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        client_address(ForwardedHeader::XForwardedFor, &values, peer(), trusted)
    }

    #[test]
    fn blocks_parse_with_bare_addresses_as_single_hosts() {
        let list = trusted(&["10.0.0.0/8", "::1", " 192.0.2.1 ", "2001:db8::/32"]);
        assert!(list.contains("10.200.0.1".parse().unwrap()));
        assert!(list.contains("::1".parse().unwrap()));
        assert!(list.contains("192.0.2.1".parse().unwrap()));
        assert!(!list.contains("192.0.2.2".parse().unwrap()));
        assert!(list.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(list.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!list.contains("11.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::parse([""]).unwrap().is_empty());
    }

    #[test]
    fn bad_blocks_are_named() {
        let err = TrustedProxies::parse(["10.0.0.0/33"]).unwrap_err();
        assert!(
            err.starts_with("\"10.0.0.0/33\" is not a CIDR block"),
            "{err}"
        );
        let err = TrustedProxies::parse(["proxy.local"]).unwrap_err();
        assert!(err.starts_with("\"proxy.local\" is not"), "{err}");
        let err = TrustedProxies::parse(["10.0.0.1/8"]).unwrap_err();
        assert_eq!(
            err,
            "\"10.0.0.1/8\" has host bits set beyond its /8 prefix; did you mean 10.0.0.0/8?"
        );
    }

    #[test]
    fn the_right_most_untrusted_entry_is_the_client() {
        let list = trusted(&["10.0.0.0/8"]);
        // The client wrote the first entry itself; the proxies appended the rest.
        let client = xff(&["6.6.6.6, 203.0.113.7, 10.0.0.9"], &list).unwrap();
        assert_eq!(client, "203.0.113.7:0".parse().unwrap());
        // Several header lines make one list, in order.
        let client = xff(&["6.6.6.6", "203.0.113.7", "10.0.0.9"], &list).unwrap();
        assert_eq!(client, "203.0.113.7:0".parse().unwrap());
        // No header: the peer itself.
        assert_eq!(xff(&[], &list).unwrap(), peer());
        // Every hop trusted: the left-most.
        assert_eq!(
            xff(&["10.1.1.1, 10.2.2.2"], &list).unwrap(),
            "10.1.1.1:0".parse().unwrap()
        );
    }

    #[test]
    fn garbage_left_of_the_client_is_never_read_but_garbage_the_proxies_wrote_is_refused() {
        let list = trusted(&["10.0.0.0/8"]);
        let client = xff(&["not an address, 203.0.113.7"], &list).unwrap();
        assert_eq!(client, "203.0.113.7:0".parse().unwrap());
        let err = xff(&["203.0.113.7, unknown"], &list).unwrap_err();
        assert_eq!(
            err.to_string(),
            "X-Forwarded-For entry \"unknown\" names no client address (outer.trusted-proxies)"
        );
        assert_eq!(
            xff(&["203.0.113.7, ,", ""], &list).unwrap(),
            "203.0.113.7:0".parse().unwrap()
        );
        let client = xff(&["\"6.6.6.6", "203.0.113.7"], &list).unwrap();
        assert_eq!(client, "203.0.113.7:0".parse().unwrap());
    }

    #[test]
    fn addresses_may_carry_ports_and_brackets() {
        for (text, expected) in [
            ("192.0.2.7", "192.0.2.7:0"),
            ("192.0.2.7:4711", "192.0.2.7:4711"),
            ("2001:db8::7", "[2001:db8::7]:0"),
            ("[2001:db8::7]", "[2001:db8::7]:0"),
            ("[2001:db8::7]:4711", "[2001:db8::7]:4711"),
        ] {
            assert_eq!(
                parse_address(text.as_bytes()),
                Some(expected.parse().unwrap()),
                "{text}"
            );
        }
        for bad in [
            "",
            "unknown",
            "_hidden",
            "192.0.2.7:",
            "[192.0.2.7]",
            "1.2.3",
        ] {
            assert_eq!(parse_address(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn forwarded_reads_the_for_parameter_of_each_element() {
        let list = trusted(&["10.0.0.0/8"]);
        let walk = |value: &str| {
            client_address(
                ForwardedHeader::Forwarded,
                &[value.as_bytes()],
                peer(),
                &list,
            )
        };
        assert_eq!(
            walk(
                "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, For=10.0.0.9;by=10.0.0.5"
            ),
            Ok("[2001:db8:cafe::17]:4711".parse().unwrap())
        );
        // A quote a client left open does not swallow what the proxies appended after it.
        assert_eq!(
            walk("for=6.6.6.6;x=\", for=192.0.2.60"),
            Ok("192.0.2.60:0".parse().unwrap())
        );
        assert!(walk("by=10.0.0.5").is_err());
        assert!(walk("for=unknown").is_err());
        assert!(walk("for=\"_hidden\"").is_err());
        assert!(walk("for=\"192.0.2.60").is_err());
    }
}
