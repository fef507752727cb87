//! What a connection through a proxy may start with or carry: arbitrary bytes as the start of
//! a PROXY protocol connection (whole, and in every split a slow writer could make), and as
//! forwarded header values from a trusted proxy. Nothing may panic; a complete header never
//! claims more bytes than it was given, and a prefix of a complete header is never refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wspair::outer::forwarded::{ForwardedHeader, TrustedProxies, client_address};
use wspair::outer::proxy_protocol::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    if let Parsed::Complete { len, .. } = parse(data) {
        assert!(len <= data.len());
        for end in 0..len {
            assert!(
                !matches!(parse(&data[..end]), Parsed::Invalid(_)),
                "a prefix of a valid header was refused at {end}"
            );
        }
    }
    let trusted = TrustedProxies::parse(["10.0.0.0/8", "2001:db8::/32"]).unwrap();
    let peer = "10.0.0.1:1".parse().unwrap();
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
        if let Err(err) = client_address(header, &values, peer, &trusted) {
            assert!(!err.to_string().is_empty());
        }
    }
});
