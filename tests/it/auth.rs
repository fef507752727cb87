//! Client tokens (`auth.secret`, `auth.public-key`): signed tokens in the query or offered as
//! a subprotocol open sessions; a missing, malformed, forged, expired or mismatched one gets
//! 401 with its reason before the claim, so the session holding the slot is never disturbed;
//! an open session closes with 4003 when its token expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use wspair::Role;
use wspair::auth::AuthConfig;

use crate::harness::http::{UPGRADE_HEADERS, request};
use crate::harness::{Client, TestNode, random_channel_id};

pub(crate) const SECRET: &str = "a-test-secret-of-32-bytes-or-more!";

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(key: &EncodingKey, alg: Algorithm, channel: &str, role: &str, exp: u64) -> String {
    let claims = serde_json::json!({ "channelId": channel, "role": role, "exp": exp });
    encode(&Header::new(alg), &claims, key).unwrap()
}

pub(crate) fn hs256(channel: &str, role: &str, exp: u64) -> String {
    token(
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
        channel,
        role,
        exp,
    )
}

/// A node that requires HS256 tokens signed with [`SECRET`].
pub(crate) async fn node_with_secret() -> TestNode {
    TestNode::start(|config| {
        config.auth = AuthConfig {
            secret: SECRET.into(),
            public_key: None,
        };
    })
    .await
}

/// A client of `role` on `id` with `token`, connected.
async fn connect_with(node: &TestNode, role: Role, id: &str, token: &str) -> Client {
    Client::connect(&url_with_token(node, role, id, token)).await
}

fn url_with_token(node: &TestNode, role: Role, id: &str, token: &str) -> String {
    format!("{}&token={token}", node.url(role, id))
}

#[tokio::test]
async fn tokens_open_sessions_and_every_bad_one_gets_401_without_touching_the_slot() {
    let node = node_with_secret().await;
    let id = random_channel_id().to_string();
    let later = unix_now() + 600;
    let mut app = connect_with(&node, Role::App, &id, &hs256(&id, "app", later)).await;
    // The web offers its token as a subprotocol, as a browser page would.
    let offer = format!(
        "{UPGRADE_HEADERS}Sec-WebSocket-Protocol: wspair.token.{}\r\n",
        hs256(&id, "web", later)
    );
    let target = format!("/channel?type=web&channelId={id}");
    let web_upgrade = request(node.addr, "GET", &target, &offer).await;
    assert_eq!(web_upgrade.status, 101, "{web_upgrade:?}");
    assert_eq!(
        web_upgrade.header("sec-websocket-protocol"),
        None,
        "a token is never echoed"
    );

    let other_secret = EncodingKey::from_secret(b"another-secret-of-32-bytes-or-more");
    let cases = [
        (None, "missing token"),
        (Some("not-a-jwt".to_owned()), "malformed token"),
        (
            Some(token(&other_secret, Algorithm::HS256, &id, "app", later)),
            "token signature does not verify",
        ),
        (Some(hs256(&id, "app", unix_now() - 10)), "token expired"),
        (
            Some(hs256(&random_channel_id().to_string(), "app", later)),
            "token is for channel",
        ),
        (
            Some(hs256(&id, "web", later)),
            "token is for role \"web\", not app",
        ),
        (
            Some(token(
                &EncodingKey::from_secret(SECRET.as_bytes()),
                Algorithm::HS512,
                &id,
                "app",
                later,
            )),
            "token algorithm HS512 is not accepted",
        ),
    ];
    for (token, reason) in cases {
        let target = match &token {
            Some(token) => format!("/channel?type=app&channelId={id}&token={token}"),
            None => format!("/channel?type=app&channelId={id}"),
        };
        let refused = request(node.addr, "GET", &target, UPGRADE_HEADERS).await;
        assert_eq!(refused.status, 401, "{reason}: {refused:?}");
        assert!(
            refused.body.starts_with(reason),
            "{reason}: {}",
            refused.body
        );
        assert_eq!(
            refused.header("www-authenticate"),
            Some("Bearer realm=\"wspair\"")
        );
    }
    let web_url = url_with_token(&node, Role::Web, &id, &hs256(&id, "web", later));
    let mut web = Client::connect(&web_url).await;
    app.send_text("the app's session was never disturbed").await;
    assert_eq!(
        web.recv_text().await,
        "the app's session was never disturbed"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn an_open_session_closes_with_4003_when_its_token_expires() {
    let node = node_with_secret().await;
    let id = random_channel_id().to_string();
    let expires = unix_now() + 2;
    let mut app = connect_with(&node, Role::App, &id, &hs256(&id, "app", expires)).await;
    let started = std::time::Instant::now();
    assert_eq!(app.close_code().await, 4003);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed at its expiry, not long after"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn es256_tokens_verify_against_a_public_key_file() {
    let key = rcgen::KeyPair::generate().unwrap();
    let dir = std::env::temp_dir().join(format!("wspair-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let public = dir.join("public.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let node = TestNode::start(|config| {
        config.auth = AuthConfig {
            secret: String::new(),
            public_key: Some(public.clone()),
        };
    })
    .await;
    let id = random_channel_id().to_string();
    let later = unix_now() + 600;
    let good = token(&signing, Algorithm::ES256, &id, "app", later);
    let mut app = Client::connect(&url_with_token(&node, Role::App, &id, &good)).await;
    let web_token = token(&signing, Algorithm::ES256, &id, "web", later);
    let mut web = Client::connect(&url_with_token(&node, Role::Web, &id, &web_token)).await;
    app.send_text("signed by the backend's key").await;
    assert_eq!(web.recv_text().await, "signed by the backend's key");
    // HS256 is not configured here: a token signed with a secret is refused.
    let target = format!(
        "/channel?type=app&channelId={id}&token={}",
        hs256(&id, "app", later)
    );
    let refused = request(node.addr, "GET", &target, UPGRADE_HEADERS).await;
    assert_eq!(refused.status, 401);
    node.shutdown().await;
}

#[tokio::test]
async fn far_fractional_and_not_yet_valid_expiries_are_handled() {
    let node = node_with_secret().await;
    let id = random_channel_id().to_string();
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signed =
        |claims: serde_json::Value| encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
    let upgrade = |token: String| {
        let target = format!("/channel?type=app&channelId={id}&token={token}");
        async move { request(node.addr, "GET", &target, UPGRADE_HEADERS).await }
    };
    // Beyond what the clock can hold: accepted, and never expires (no panic on the way).
    let never = signed(serde_json::json!({"channelId": id, "role": "app", "exp": u64::MAX}));
    assert_eq!(upgrade(never).await.status, 101);
    // As a browser computes it, with a fraction.
    let fractional = signed(
        serde_json::json!({"channelId": id, "role": "app", "exp": unix_now() as f64 + 600.5}),
    );
    assert_eq!(upgrade(fractional).await.status, 101);
    let early = signed(
        serde_json::json!({"channelId": id, "role": "app", "exp": unix_now() + 600, "nbf": unix_now() + 300}),
    );
    let refused = upgrade(early).await;
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (401, "token not valid yet (nbf)\n")
    );
    node.shutdown().await;
}
