//! The checks before an upgrade: arbitrary bytes as a request head (parsed as the node's head
//! reader hands it to hyper), then the query and header checks and the origin check. Nothing
//! may panic; every refusal must have an HTTP status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wspair::origins::AllowedOrigins;
use wspair::outer::handshake::{check, check_origin, parse_query};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_query(text);
    }
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let mut request = http::Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/"));
    if parsed.version == Some(1) {
        request = request.version(http::Version::HTTP_11);
    }
    for header in parsed.headers.iter() {
        request = request.header(header.name, header.value);
    }
    let Ok(request) = request.body(()) else { return };
    for v1 in [false, true] {
        if let Err(err) = check(&request, "/channel", v1) {
            let _ = (err.status(), err.headers(), err.to_string());
        }
    }
    let origins = AllowedOrigins::parse("https://app.example.com,https://*.example.org").unwrap();
    let _ = check_origin(&request, &origins);
});
