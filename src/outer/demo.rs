//! The demo page (`outer.demo`): a web page at `/` that shows what wspair is for. Opened on a
//! computer it takes the `web` role of a fresh channel and shows a link and a QR code; the link,
//! opened on a phone or in a second tab, takes the `app` role of the same channel. The two pages
//! pair, exchange messages with per-message delivery acks, and show each other's presence, all
//! through the `wspair.v1` JavaScript library (`clients/js/`), served from here too.
//!
//! Every file is compiled into the binary: the demo works offline and loads nothing from a CDN.
//! It is off by default because it turns the node into a public message relay for anyone who
//! can reach its port (README, "Demo page").

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};

use crate::config::DEMO_PREFIX;

const INDEX_HTML: &str = include_str!("demo/index.html");
const PAGE_JS: &str = include_str!("demo/page.js");
const STYLE_CSS: &str = include_str!("demo/style.css");
/// The JavaScript client library as published in `clients/js/src/`: its modules, by file name.
const LIBRARY: [(&str, &str); 3] = [
    ("wspair.js", include_str!("../../clients/js/src/wspair.js")),
    ("frame.js", include_str!("../../clients/js/src/frame.js")),
    (
        "protocol.js",
        include_str!("../../clients/js/src/protocol.js"),
    ),
];

/// Longest link `/demo/qr.svg` encodes. Rendering is synchronous and grows with the square of
/// the code's size (a 512-byte text took about 5 ms): links are short, and only links are drawn.
pub const QR_MAX_TEXT: usize = 160;

/// The placeholder in `index.html` that becomes `outer.path`.
const PATH_PLACEHOLDER: &str = "{{WSPAIR_PATH}}";

/// Whether `path` is one of the demo's (only asked when `outer.demo` is on).
pub fn serves(path: &str) -> bool {
    path == "/" || path.starts_with(DEMO_PREFIX)
}

/// Answers a request for a demo path: the file, or 404/405/400 with a reason.
pub fn respond(
    method: &Method,
    path: &str,
    query: Option<&str>,
    upgrade_path: &str,
) -> Response<Full<Bytes>> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the demo page answers GET and HEAD only\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let file = path.strip_prefix(DEMO_PREFIX).unwrap_or(path);
    match file {
        "/" => asset(index_html(upgrade_path).into(), "text/html; charset=utf-8"),
        "page.js" => asset(
            Bytes::from_static(PAGE_JS.as_bytes()),
            "text/javascript; charset=utf-8",
        ),
        "style.css" => asset(
            Bytes::from_static(STYLE_CSS.as_bytes()),
            "text/css; charset=utf-8",
        ),
        "qr.svg" => match qr_text(query) {
            Ok(text) => match qr_svg(&text) {
                Some(svg) => asset(svg.into(), "image/svg+xml"),
                None => self::text(StatusCode::BAD_REQUEST, "text does not fit in a QR code\n"),
            },
            Err(reason) => self::text(StatusCode::BAD_REQUEST, reason),
        },
        _ => match LIBRARY.iter().find(|(name, _)| *name == file) {
            Some((_, source)) => asset(
                Bytes::from_static(source.as_bytes()),
                "text/javascript; charset=utf-8",
            ),
            None => text(StatusCode::NOT_FOUND, "no such demo file\n"),
        },
    }
}

/// The page, naming the WebSocket path it connects to.
fn index_html(upgrade_path: &str) -> String {
    INDEX_HTML.replace(PATH_PLACEHOLDER, &escape_html(upgrade_path))
}

/// The `text` query parameter of `/demo/qr.svg`, checked: a link to the demo page that joins a
/// channel, `http(s)://HOST/?join=ID`, at most [`QR_MAX_TEXT`] bytes.
fn qr_text(query: Option<&str>) -> Result<String, &'static str> {
    let text = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(name, _)| name == "text")
        .map(|(_, value)| value.into_owned())
        .ok_or("missing query parameter `text`\n")?;
    if text.len() > QR_MAX_TEXT || !is_join_link(&text) {
        return Err(
            "`text` must be a link to the demo page, http(s)://HOST/?join=ID, of at most 160 bytes\n",
        );
    }
    Ok(text)
}

/// Whether `text` is `http://HOST/?join=ID` or `https://...`, with a 32-character channel id.
fn is_join_link(text: &str) -> bool {
    let Some(rest) = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
    else {
        return false;
    };
    let Some((host, id)) = rest.split_once("/?join=") else {
        return false;
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        && id.parse::<crate::pair::ChannelId>().is_ok()
}

/// `text` as a QR code in SVG (dark modules on white, with the standard quiet zone).
fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .build(),
    )
}

fn asset(body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // The page runs its own scripts and the library, talks to this node only, and is never
    // framed by another site.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

fn text(status: StatusCode, reason: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(reason.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_the_upgrade_path_escaped() {
        assert!(INDEX_HTML.contains(PATH_PLACEHOLDER));
        let page = index_html("/a\"<b");
        assert!(page.contains("content=\"/a&quot;&lt;b\""), "{page}");
        assert!(!page.contains(PATH_PLACEHOLDER));
    }

    #[test]
    fn qr_text_is_required_and_bounded() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(qr_text(None).is_err());
        assert!(qr_text(Some("text=")).is_err());
        assert!(qr_text(Some("text=hello")).is_err());
        assert!(qr_text(Some("text=http%3A%2F%2Fx%2F%3Fjoin%3Dshort")).is_err());
        assert!(
            qr_text(Some(
                "text=javascript%3Aalert(1)%2F%3Fjoin%3D0123456789abcdef0123456789abcdef"
            ))
            .is_err()
        );
        let long_host = "h".repeat(QR_MAX_TEXT);
        assert!(qr_text(Some(&format!("text=http://{long_host}/?join={id}"))).is_err());
        assert_eq!(
            qr_text(Some(&format!(
                "text=https%3A%2F%2Frelay.example%3A8443%2F%3Fjoin%3D{id}"
            )))
            .unwrap(),
            format!("https://relay.example:8443/?join={id}")
        );
        let svg = qr_svg("http://127.0.0.1:1024/?join=abc").unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg"));
    }

    #[test]
    fn every_module_the_library_imports_is_served() {
        for (name, source) in LIBRARY {
            for import in source.split("from './").skip(1) {
                let module = import.split('\'').next().unwrap();
                assert!(
                    LIBRARY.iter().any(|(served, _)| *served == module),
                    "{name} imports ./{module}, which the demo does not serve"
                );
            }
        }
    }

    #[test]
    fn only_get_and_head_and_known_files() {
        assert_eq!(
            respond(&Method::POST, "/", None, "/channel").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            respond(&Method::GET, "/demo/nope.js", None, "/channel").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::HEAD, "/demo/page.js", None, "/channel").status(),
            StatusCode::OK
        );
    }
}
