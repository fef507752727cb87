//! The demo page (`outer.demo`): off by default, and when on, its files at `/` and `/demo/*`
//! next to an upgrade path that works as before. The page itself is driven in a real browser by
//! `tests/browser/` (scripts/test-browser.sh).

use wspair::Role;

use crate::harness::http::request;
use crate::harness::{TestNode, random_channel_id};

#[tokio::test]
async fn the_demo_is_off_by_default() {
    let node = TestNode::start(|_| {}).await;
    for target in ["/", "/demo/page.js", "/demo/wspair.js"] {
        let response = request(node.addr, "GET", target, "").await;
        assert_eq!(response.status, 404, "{target}: {response:?}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn the_demo_serves_its_page_library_and_qr_codes_beside_the_upgrade_path() {
    let node = TestNode::start(|config| config.outer.demo = true).await;

    let page = request(node.addr, "GET", "/", "").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.body
            .contains(r#"<meta name="wspair-path" content="/channel">"#),
        "{}",
        page.body
    );
    assert!(
        page.header("content-security-policy")
            .is_some_and(|csp| csp.contains("default-src 'self'"))
    );

    for (file, kind) in [
        ("page.js", "text/javascript"),
        ("wspair.js", "text/javascript"),
        ("style.css", "text/css"),
    ] {
        let response = request(node.addr, "GET", &format!("/demo/{file}"), "").await;
        assert_eq!(response.status, 200, "{file}");
        assert!(
            response.header("content-type").unwrap().starts_with(kind),
            "{file}"
        );
        assert!(!response.body.is_empty(), "{file}");
    }
    let link = "http%3A%2F%2F127.0.0.1%3A1024%2F%3Fjoin%3D0123456789abcdef0123456789abcdef";
    let qr = request(node.addr, "GET", &format!("/demo/qr.svg?text={link}"), "").await;
    assert_eq!(qr.status, 200);
    assert_eq!(qr.header("content-type"), Some("image/svg+xml"));
    assert!(qr.body.contains("<svg"));

    let missing = request(node.addr, "GET", "/demo/qr.svg", "").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (400, "missing query parameter `text`\n")
    );
    let not_a_link = request(node.addr, "GET", "/demo/qr.svg?text=anything", "").await;
    assert_eq!(not_a_link.status, 400);
    let unknown = request(node.addr, "GET", "/demo/secret.txt", "").await;
    assert_eq!(unknown.status, 404);
    let post = request(node.addr, "POST", "/", "").await;
    assert_eq!(
        (post.status, post.header("allow")),
        (405, Some("GET, HEAD"))
    );

    // The relay itself is unchanged.
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    app.send_text("hello").await;
    assert_eq!(web.recv_text().await, "hello");
    node.shutdown().await;
}
