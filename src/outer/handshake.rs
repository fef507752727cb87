//! Checks an upgrade request before it is answered: path, method, query and upgrade headers.
//!
//! Every refusal is a [`HandshakeError`] that becomes an HTTP status with a one-line reason in
//! the body, so a client learns what it got wrong before any WebSocket exists; this includes
//! the refusals of the request head itself (`outer::head`). Query rules: `type` and
//! `channelId` are required and may appear once each; other parameters are ignored, so
//! clients may add their own (cache busters, tracing ids) without breaking. Upgrade headers
//! follow RFC 6455 §4.2.1 strictly: HTTP/1.1, one `Host`, version 13, and one
//! `Sec-WebSocket-Key` that is the base64 encoding of 16 bytes.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Version};

use crate::hub::DuplicateError;
use crate::pair::{ChannelId, ChannelIdError, Role, RoleError};
use crate::router::ClaimError;
use crate::v1::ClientId;

/// What a valid upgrade request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRequest {
    /// The `channelId` parameter.
    pub channel_id: ChannelId,
    /// The `type` parameter.
    pub role: Role,
    /// The identity (from the `key` and `gen` parameters) of a client that offered
    /// `wspair.v1` (and the node accepts it); `None` for a raw client.
    pub client: Option<ClientId>,
}

/// Why an upgrade request is refused. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The path is not `outer.path` (404).
    #[error("no such path {path:?}; WebSocket upgrades are served on {expected}")]
    WrongPath {
        /// The path the client asked for.
        path: String,
        /// `outer.path`.
        expected: String,
    },
    /// A required query parameter is absent (400).
    #[error("missing query parameter `{0}`")]
    Missing(&'static str),
    /// A query parameter appears more than once (400).
    #[error("query parameter `{0}` is repeated")]
    Repeated(&'static str),
    /// `type` is neither `app` nor `web` (400).
    #[error("query parameter `type` {0}")]
    BadRole(#[source] RoleError),
    /// `channelId` is not 32 characters of `[A-Za-z0-9_]` (400).
    #[error("query parameter `channelId` {0}")]
    BadChannelId(#[source] ChannelIdError),
    /// A request other than GET (405).
    #[error("method {0} not allowed; use GET with a WebSocket upgrade")]
    Method(Method),
    /// A request to `/healthz` other than GET or HEAD (405).
    #[error("method {0} not allowed on /healthz; use GET or HEAD")]
    HealthzMethod(Method),
    /// The request head is longer than `outer.max-request-head` (431).
    #[error("request head exceeds outer.max-request-head ({0} bytes)")]
    HeadTooLarge(usize),
    /// Not even the request line fits in `outer.max-request-head` (414).
    #[error("request line exceeds outer.max-request-head ({0} bytes)")]
    RequestLineTooLong(usize),
    /// The request head has more header fields than hyper parses (431).
    #[error("request head has more than {0} header fields")]
    TooManyHeaderFields(usize),
    /// The request head is not HTTP/1.x (400).
    #[error("malformed request head: {0}")]
    MalformedHead(#[source] httparse::Error),
    /// An upgrade over HTTP/1.0 (400). RFC 6455 §4.1 requires HTTP/1.1 or later, and §4.2.1
    /// tells the server to stop and answer an error "such as 400 Bad Request" when the
    /// handshake does not match; 505 would be wrong, since the server does speak HTTP/1.0
    /// (`/healthz`), and 426 would ask for the upgrade the client already asked for.
    #[error("WebSocket upgrades need HTTP/1.1, got {0:?}")]
    NeedsHttp11(Version),
    /// A header the upgrade needs is absent (400): `Host` (RFC 9112 §3.2) or
    /// `Sec-WebSocket-Key`.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// A header that must appear once appears more than once (400).
    #[error("header `{0}` is repeated")]
    RepeatedHeader(&'static str),
    /// `Sec-WebSocket-Key` does not have the 24 characters of base64 of 16 bytes (400).
    #[error("header `Sec-WebSocket-Key` must be 24 characters (base64 of 16 bytes), got {0}")]
    KeyLength(usize),
    /// `Sec-WebSocket-Key` has 24 characters but is not base64 of 16 bytes (400).
    #[error("header `Sec-WebSocket-Key` is not the base64 encoding of 16 bytes")]
    KeyNotBase64,
    /// A plain HTTP request to the upgrade path (426).
    #[error("this path accepts only WebSocket upgrades")]
    NotUpgrade,
    /// The client speaks a WebSocket version other than 13 (426).
    #[error("unsupported Sec-WebSocket-Version; this server speaks 13")]
    Version,
    /// The upgrade headers are malformed, such as a missing Sec-WebSocket-Key (400).
    #[error("bad WebSocket upgrade request: {0}")]
    BadUpgrade(String),
    /// The role is taken and `outer.on-duplicate = "reject"` (409).
    #[error("{0}")]
    Duplicate(#[from] DuplicateError),
    /// The registry could not record the claim (503); the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// The node is draining (503): the client should connect to another node.
    #[error("this node is draining; connect to another node")]
    Draining,
    /// A `wspair.v1` offer without valid `key` and `gen` parameters (400).
    #[error("{0}")]
    BadV1(String),
    /// `outer.max-connections` connections are open (503): retry, or use another node.
    #[error(
        "this node is full: outer.max-connections ({0}) connections are open; retry or connect to another node"
    )]
    Full(usize),
    /// Too many connections open from one address (429).
    #[error("too many connections from {0}: outer.max-connections-per-ip is {1}")]
    TooManyFromIp(String, usize),
    /// Too many new connections per second from one address (429).
    #[error("too many new connections from {0}: outer.connections-per-second-per-ip is {1}")]
    TooFastFromIp(String, u32),
    /// A missing, malformed, expired or mismatched client token (`auth.*`) (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A browser page whose origin is not in `outer.allowed-origins` (403).
    #[error("origin {0:?} is not allowed (outer.allowed-origins)")]
    Origin(String),
    /// A trusted proxy's forwarded header names no address where the client should be (400).
    #[error("{0}")]
    Forwarded(#[from] super::forwarded::ForwardedError),
}

impl From<ClaimError> for HandshakeError {
    fn from(err: ClaimError) -> Self {
        match err {
            ClaimError::Duplicate(duplicate) => HandshakeError::Duplicate(duplicate),
            other => HandshakeError::Unavailable(other.to_string()),
        }
    }
}

impl HandshakeError {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::WrongPath { .. } => StatusCode::NOT_FOUND,
            HandshakeError::Missing(_)
            | HandshakeError::Repeated(_)
            | HandshakeError::BadRole(_)
            | HandshakeError::BadChannelId(_)
            | HandshakeError::BadUpgrade(_)
            | HandshakeError::MalformedHead(_)
            | HandshakeError::NeedsHttp11(_)
            | HandshakeError::MissingHeader(_)
            | HandshakeError::RepeatedHeader(_)
            | HandshakeError::KeyLength(_)
            | HandshakeError::KeyNotBase64
            | HandshakeError::BadV1(_)
            | HandshakeError::Forwarded(_) => StatusCode::BAD_REQUEST,
            HandshakeError::Method(_) | HandshakeError::HealthzMethod(_) => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            HandshakeError::HeadTooLarge(_) | HandshakeError::TooManyHeaderFields(_) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HandshakeError::RequestLineTooLong(_) => StatusCode::URI_TOO_LONG,
            HandshakeError::NotUpgrade | HandshakeError::Version => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::Duplicate(_) => StatusCode::CONFLICT,
            HandshakeError::Origin(_) => StatusCode::FORBIDDEN,
            HandshakeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HandshakeError::TooManyFromIp(..) | HandshakeError::TooFastFromIp(..) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            HandshakeError::Unavailable(_) | HandshakeError::Draining | HandshakeError::Full(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Headers the refusal must carry (RFC 6455 §4.4 and RFC 9110 §15.5.22).
    pub fn headers(&self) -> Vec<(header::HeaderName, HeaderValue)> {
        match self {
            HandshakeError::NotUpgrade => vec![
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
            ],
            HandshakeError::Version => vec![
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                ),
            ],
            HandshakeError::Method(_) => vec![(header::ALLOW, HeaderValue::from_static("GET"))],
            HandshakeError::HealthzMethod(_) => {
                vec![(header::ALLOW, HeaderValue::from_static("GET, HEAD"))]
            }
            HandshakeError::TooManyFromIp(..) | HandshakeError::TooFastFromIp(..) => {
                vec![(header::RETRY_AFTER, HeaderValue::from_static("1"))]
            }
            HandshakeError::Unauthorized(_) => vec![(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wspair\""),
            )],
            _ => Vec::new(),
        }
    }
}

/// Checks path, method, query, that the request asks for a WebSocket, and then its upgrade
/// headers (HTTP version, `Host`, `Sec-WebSocket-Version`, `Sec-WebSocket-Key`), in that order;
/// last, when `v1` is on and the client offers `wspair.v1`, its `sid` and `gen`.
pub fn check<B>(
    request: &Request<B>,
    expected_path: &str,
    v1: bool,
) -> Result<PairRequest, HandshakeError> {
    let path = request.uri().path();
    if path != expected_path {
        return Err(HandshakeError::WrongPath {
            path: path.to_owned(),
            expected: expected_path.to_owned(),
        });
    }
    let method = request.method();
    if method != Method::GET {
        return Err(HandshakeError::Method(method.clone()));
    }
    let pair = parse_query(request.uri().query().unwrap_or(""))?;
    let headers = request.headers();
    if !asks_for_websocket(headers) {
        return Err(HandshakeError::NotUpgrade);
    }
    if request.version() != Version::HTTP_11 {
        return Err(HandshakeError::NeedsHttp11(request.version()));
    }
    single_header(headers, header::HOST, "Host")?;
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    if !(versions.next().is_some_and(|version| version == "13") && versions.next().is_none()) {
        return Err(HandshakeError::Version);
    }
    check_key(single_header(
        headers,
        header::SEC_WEBSOCKET_KEY,
        "Sec-WebSocket-Key",
    )?)?;
    let mut pair = pair;
    let offers_v1 = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .any(|value| crate::v1::offered(value.as_bytes()));
    if v1 && offers_v1 {
        pair.client = Some(parse_v1_query(request.uri().query().unwrap_or(""))?);
    }
    Ok(pair)
}

/// Checks the page that opens the WebSocket (`Origin`) against `outer.allowed-origins`.
pub fn check_origin<B>(
    request: &Request<B>,
    allowed: &crate::origins::AllowedOrigins,
) -> Result<(), HandshakeError> {
    if allowed.is_open() || !request.headers().contains_key(header::ORIGIN) {
        return Ok(());
    }
    let value = single_header(request.headers(), header::ORIGIN, "Origin")?;
    let origin = String::from_utf8_lossy(value.as_bytes());
    if allowed.allows(Some(&origin)) {
        Ok(())
    } else {
        Err(HandshakeError::Origin(origin.into_owned()))
    }
}

/// The client token of an upgrade: the `token` query parameter, or an offered subprotocol
/// `wspair.token.<token>`.
pub fn token_of<B>(request: &Request<B>) -> Option<String> {
    let query = request.uri().query().unwrap_or("");
    if let Some((_, token)) =
        form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "token")
    {
        return Some(token.into_owned());
    }
    request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|offer| {
            offer
                .trim()
                .strip_prefix(crate::auth::TOKEN_SUBPROTOCOL_PREFIX)
        })
        .map(str::to_owned)
}

/// Parses the `key` and `gen` parameters of a v1 client.
fn parse_v1_query(query: &str) -> Result<ClientId, HandshakeError> {
    let [key, generation] = query_values(query, ["key", "gen"])?;
    ClientId::from_query(key.as_deref(), generation.as_deref()).map_err(HandshakeError::BadV1)
}

/// The percent-decoded values of the parameters `names` (others are ignored); a repeated one is
/// an error.
fn query_values<'a, const N: usize>(
    query: &'a str,
    names: [&'static str; N],
) -> Result<[Option<std::borrow::Cow<'a, str>>; N], HandshakeError> {
    let mut values = [const { None }; N];
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if let Some(i) = names.iter().position(|param| *param == name)
            && values[i].replace(value).is_some()
        {
            return Err(HandshakeError::Repeated(names[i]));
        }
    }
    Ok(values)
}

/// The one value of `name`; absent or repeated is an error naming `spelling`.
fn single_header<'a>(
    headers: &'a HeaderMap,
    name: header::HeaderName,
    spelling: &'static str,
) -> Result<&'a HeaderValue, HandshakeError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Ok(value),
        (None, _) => Err(HandshakeError::MissingHeader(spelling)),
        (Some(_), Some(_)) => Err(HandshakeError::RepeatedHeader(spelling)),
    }
}

/// RFC 6455 §4.1: the key is a random 16-byte value, base64-encoded, which is always 22
/// base64 characters and `==`. The 22nd character carries only 2 bits of the last byte, so
/// its low 4 bits must be zero (RFC 4648 §3.5, canonical encoding).
fn check_key(key: &HeaderValue) -> Result<(), HandshakeError> {
    let key = key.as_bytes();
    if key.len() != 24 {
        return Err(HandshakeError::KeyLength(key.len()));
    }
    let sextet = |byte: u8| match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (digits, padding) = key.split_at(22);
    let sextets: Option<Vec<u8>> = digits.iter().map(|&byte| sextet(byte)).collect();
    match sextets {
        Some(sextets) if padding == b"==" && sextets[21] & 0x0f == 0 => Ok(()),
        _ => Err(HandshakeError::KeyNotBase64),
    }
}

/// Parses `type=app|web&channelId=ID`, percent-decoding values.
pub fn parse_query(query: &str) -> Result<PairRequest, HandshakeError> {
    let [role, channel_id] = query_values(query, ["type", "channelId"])?;
    let role = role.ok_or(HandshakeError::Missing("type"))?;
    let channel_id = channel_id.ok_or(HandshakeError::Missing("channelId"))?;
    Ok(PairRequest {
        role: role.parse().map_err(HandshakeError::BadRole)?,
        channel_id: channel_id.parse().map_err(HandshakeError::BadChannelId)?,
        client: None,
    })
}

fn asks_for_websocket(headers: &HeaderMap) -> bool {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|text| {
                text.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdefghijABCDEFGHIJ_x";

    fn error_text(query: &str) -> String {
        parse_query(query).unwrap_err().to_string()
    }

    #[test]
    fn valid_query_in_any_order() {
        let request = parse_query(&format!("channelId={ID}&type=web")).unwrap();
        assert_eq!(request.role, Role::Web);
        assert_eq!(request.channel_id.as_str(), ID);
    }

    #[test]
    fn unknown_parameters_are_ignored() {
        assert!(parse_query(&format!("type=app&channelId={ID}&t=123")).is_ok());
    }

    #[test]
    fn missing_parameters_are_named() {
        assert_eq!(
            error_text(&format!("channelId={ID}")),
            "missing query parameter `type`"
        );
        assert_eq!(
            error_text("type=app"),
            "missing query parameter `channelId`"
        );
        assert_eq!(error_text(""), "missing query parameter `type`");
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert_eq!(
            error_text(&format!("type=app&type=web&channelId={ID}")),
            "query parameter `type` is repeated"
        );
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        assert_eq!(
            error_text(&format!("type=phone&channelId={ID}")),
            "query parameter `type` must be `app` or `web`, got \"phone\""
        );
        assert_eq!(
            error_text("type=app&channelId=short"),
            "query parameter `channelId` must be 32 characters, got 5"
        );
    }

    #[test]
    fn percent_encoded_values_are_decoded_before_checking() {
        let encoded = ID.replace('_', "%5F");
        assert!(parse_query(&format!("type=%61pp&channelId={encoded}")).is_ok());
    }

    fn upgrade_request(key: &str) -> Request<()> {
        Request::get(format!("/channel?type=app&channelId={ID}"))
            .header("host", "example.com")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", key)
            .body(())
            .unwrap()
    }

    #[test]
    fn plain_get_is_not_an_upgrade() {
        let request = Request::get(format!("/channel?type=app&channelId={ID}"))
            .body(())
            .unwrap();
        let err = check(&request, "/channel", true).unwrap_err();
        assert_eq!(err.status(), StatusCode::UPGRADE_REQUIRED);
    }

    #[test]
    fn keys_must_be_base64_of_16_bytes() {
        assert!(
            check(
                &upgrade_request("dGhlIHNhbXBsZSBub25jZQ=="),
                "/channel",
                true
            )
            .is_ok()
        );
        assert!(
            check(
                &upgrade_request("AAAAAAAAAAAAAAAAAAAAAA=="),
                "/channel",
                true
            )
            .is_ok()
        );
        assert!(
            check(
                &upgrade_request("/////////////////////w=="),
                "/channel",
                true
            )
            .is_ok()
        );
        let refused = |key: &str| {
            check(&upgrade_request(key), "/channel", true)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("abc"),
            "header `Sec-WebSocket-Key` must be 24 characters (base64 of 16 bytes), got 3"
        );
        // 15 and 17 bytes, a non-canonical last digit, and a character outside the alphabet.
        for key in [
            "AAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAA=",
            "AAAAAAAAAAAAAAAAAAAAAB==",
            "AAAAAAAAAAAAAAAAAAAA-A==",
        ] {
            assert!(
                check(&upgrade_request(key), "/channel", true).is_err(),
                "{key} is refused"
            );
        }
    }
}
