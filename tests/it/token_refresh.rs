//! A wspair.v1 client hands its open session a fresh token (PROTOCOL.md §2.5): a good one moves
//! the session's 4003 to the new expiry, a bad one (or one sooner than a second after the last)
//! is refused with its reason and leaves the old expiry standing; the Rust library sends it on
//! the open connection and presents the latest token on every later connection.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wspair::Role;
use wspair_client::Event;

use crate::auth::{hs256, node_with_secret, unix_now};
use crate::harness::client::Ending;
use crate::harness::v1flow::{base_url, connect_with};
use crate::harness::v1wire::{self, Wire};
use crate::harness::{TestNode, random_channel_id};

/// A NODE `token` request.
fn token_request(token: &str) -> Vec<u8> {
    let mut frame = vec![0x06];
    frame.extend_from_slice(
        serde_json::json!({"v": 1, "t": "token", "token": token})
            .to_string()
            .as_bytes(),
    );
    frame
}

/// A v1 connection of `role` on `id` (client `key`, generation `generation`) whose upgrade
/// carries a token expiring at `exp`.
async fn connect_v1(
    node: &TestNode,
    role: Role,
    id: &str,
    exp: u64,
    (key, generation): (u128, u32),
) -> Wire {
    let token = hs256(id, &role.to_string(), exp);
    let base = format!("{}&token={token}", node.url(role, id));
    v1wire::connect(&base, key, generation).await
}

/// The close code `wire` ends with; fails when it ends without one.
async fn close_code(wire: &mut Wire) -> u16 {
    match wire.ending().await {
        Ending::Close(code, _) => code,
        Ending::NoCloseFrame => panic!("the connection ended without a close frame"),
    }
}

/// Sleeps until 600 ms past `exp` (Unix seconds).
async fn sleep_until_past(exp: u64) {
    let past = UNIX_EPOCH + Duration::from_secs(exp) + Duration::from_millis(600);
    let left = past.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left).await;
}

/// Sends `token` to the session and returns the node's answer.
async fn refresh(wire: &mut Wire, token: &str) -> serde_json::Value {
    wire.send(token_request(token)).await;
    let answer = wire.recv_server().await;
    assert_eq!(answer["t"], "token", "{answer}");
    answer
}

#[tokio::test]
async fn a_v1_session_takes_a_fresh_token_and_closes_at_its_expiry_not_the_first() {
    let node = node_with_secret().await;
    let id = random_channel_id().to_string();
    let first_exp = unix_now() + 2;
    let mut web = connect_v1(&node, Role::Web, &id, first_exp, (1, 1)).await;
    let welcome = web.recv_server().await;
    assert_eq!(welcome["t"], "welcome");
    assert_eq!(welcome["token_exp"].as_f64(), Some(first_exp as f64));
    assert_eq!(web.recv_server().await["t"], "peer");

    let later = unix_now() + 5;
    let answer = refresh(&mut web, &hs256(&id, "web", later)).await;
    assert_eq!(
        (answer["ok"].as_bool(), answer["exp"].as_f64()),
        (Some(true), Some(later as f64))
    );
    // A second check within a second is refused without looking at the token.
    let answer = refresh(&mut web, &hs256(&id, "web", later)).await;
    assert_eq!(answer["ok"], false);
    assert_eq!(
        answer["reason"],
        "token refreshed less than 1 s ago; try again later"
    );

    // Past the first token's expiry the session is still open: it answers, and a token for
    // the other role is refused with the reason an upgrade would get.
    sleep_until_past(first_exp).await;
    let answer = refresh(&mut web, &hs256(&id, "app", later)).await;
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["reason"], "token is for role \"app\", not web");

    // A NODE request of a type this node does not know is ignored, and the session goes on.
    let mut unknown = vec![0x06];
    unknown.extend_from_slice(br#"{"v":1,"t":"later-request"}"#);
    web.send(unknown).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = refresh(&mut web, &hs256(&id, "web", later)).await;
    assert_eq!(answer["ok"], true);
    // The session closes at the expiry of the token in force.
    assert_eq!(close_code(&mut web).await, 4003);
    let now = SystemTime::now();
    assert!(
        now >= UNIX_EPOCH + Duration::from_secs(later),
        "not before the new expiry"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_refused_token_leaves_the_first_expiry_standing() {
    let node = node_with_secret().await;
    let id = random_channel_id().to_string();
    let other = random_channel_id().to_string();
    let first_exp = unix_now() + 2;
    let mut app = connect_v1(&node, Role::App, &id, first_exp, (2, 1)).await;
    app.welcomed().await;
    let answer = refresh(&mut app, &hs256(&other, "app", unix_now() + 600)).await;
    assert_eq!(answer["ok"], false);
    assert_eq!(
        answer["reason"],
        format!("token is for channel {other:?}, not {id}")
    );
    let refused_at = Instant::now();
    assert_eq!(close_code(&mut app).await, 4003);
    assert!(
        refused_at.elapsed() < Duration::from_secs(4),
        "closed at the first expiry"
    );
    // A malformed request is a protocol error like any malformed v1 frame.
    let mut app = connect_v1(&node, Role::App, &id, unix_now() + 600, (2, 2)).await;
    app.welcomed().await;
    let mut malformed = vec![0x06];
    malformed.extend_from_slice(br#"{"v":1,"t":"token"}"#);
    app.send(malformed).await;
    assert_eq!(close_code(&mut app).await, 4007);
    node.shutdown().await;
}

/// The next event that `pick` recognises, within 10 s.
async fn next_matching<T>(
    client: &mut wspair_client::Client,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = client.next_event().await.expect("the client runs");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await
    .expect("the event comes in time")
}

#[tokio::test]
async fn the_rust_client_refreshes_its_token_and_reconnects_with_the_latest() {
    let node = node_with_secret().await;
    let id = random_channel_id().to_string();
    let urls = [base_url(node.addr)];
    let first_exp = unix_now() + 2;
    let mut web = connect_with(&urls, &id, wspair_client::Role::Web, |config| {
        config.token = Some(hs256(&id, "web", first_exp));
    })
    .await;
    let mut app = connect_with(&urls, &id, wspair_client::Role::App, |config| {
        config.token = Some(hs256(&id, "app", unix_now() + 600));
    })
    .await;

    let later = unix_now() + 600;
    web.set_token(hs256(&id, "web", later)).await.unwrap();
    let expires = next_matching(&mut web, |event| match event {
        Event::TokenRefreshed { expires } => Some(expires),
        Event::TokenRefused { reason } => panic!("refused: {reason}"),
        _ => None,
    })
    .await;
    assert_eq!(expires, Some(UNIX_EPOCH + Duration::from_secs(later)));

    // Past the first expiry the connection is the same one, and messages flow both ways.
    sleep_until_past(first_exp).await;
    assert_eq!(web.stats().reconnects, 0, "no 4003, no reconnect");
    web.send_text("after the first expiry").await.unwrap();
    let text = next_matching(&mut app, |event| match event {
        Event::Message { payload, .. } => Some(payload),
        _ => None,
    })
    .await;
    assert_eq!(&text[..], b"after the first expiry");

    // A new connection presents the latest token: the first has expired and would get 401.
    web.reconnect().await;
    assert_eq!(web.stats().reconnects, 1);
    app.send_text("after the reconnect").await.unwrap();
    let text = next_matching(&mut web, |event| match event {
        Event::Message { payload, .. } => Some(payload),
        Event::Refused { status, reason } => panic!("refused {status}: {reason}"),
        _ => None,
    })
    .await;
    assert_eq!(&text[..], b"after the reconnect");
    node.shutdown().await;
}
