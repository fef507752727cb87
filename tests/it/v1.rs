//! wspair.v1 at the wire: negotiation, identity and fencing, frames relayed untouched, a v1
//! client paired with a raw one, and the refusals (400, 409, 4007, 4008). Each test drives
//! real sockets frame by frame.

use wspair::Role;
use wspair::config::DuplicatePolicy;

use crate::harness::client::Ending;
use crate::harness::redis::RedisServer;
use crate::harness::v1wire::{self, APP_KEY, WEB_KEY, ack, batch, data, sync};
use crate::harness::{TestNode, random_channel_id};

#[tokio::test]
async fn each_side_is_welcomed_and_told_of_the_other() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut web = v1wire::connect(&node.url(Role::Web, id.as_str()), WEB_KEY, 1).await;
    let welcome = web.recv_server().await;
    assert_eq!(welcome["t"], "welcome");
    assert_eq!(welcome["gen"], 1);
    assert_eq!(welcome["window"]["msgs"], 1024);
    assert_eq!(welcome["max_frame"], 10240);
    assert_eq!(web.recv_server().await["state"], "away");

    let mut app = v1wire::connect(&node.url(Role::App, id.as_str()), APP_KEY, 7).await;
    let peer = app.welcomed().await;
    assert_eq!(peer["state"], "online");
    assert_eq!(peer["sid"], format!("{:016x}", v1wire::sid(WEB_KEY)));
    assert_eq!(peer["gen"], 1);
    let peer = web.recv_server().await;
    assert_eq!(peer["state"], "online");
    assert_eq!(peer["sid"], format!("{:016x}", v1wire::sid(APP_KEY)));
    assert_eq!(peer["gen"], 7);

    app.client.close().await;
    assert_eq!(web.recv_server().await["state"], "away");
    node.shutdown().await;
}

#[tokio::test]
async fn frames_between_v1_clients_are_relayed_byte_for_byte() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let (mut app, mut web) = v1wire::welcomed_pair(&node, &id).await;

    let frames = [
        sync(v1wire::sid(APP_KEY), 1, 1, 1, None),
        data(1, true, "héllo".as_bytes()),
        data(2, false, &[0, 1, 2, 255]),
        data(0, false, b"unnumbered"),
    ];
    for frame in &frames {
        app.send(frame.clone()).await;
    }
    for frame in &frames {
        assert_eq!(&web.recv().await, frame);
    }
    let acked = ack(v1wire::sid(APP_KEY), 2);
    web.send(acked.clone()).await;
    assert_eq!(app.recv().await, acked);
    node.shutdown().await;
}

#[tokio::test]
async fn a_v1_client_and_a_raw_client_each_keep_their_own_contract() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut raw = node.connect(Role::Web, &id).await;
    let mut app = v1wire::connect(&node.url(Role::App, id.as_str()), APP_KEY, 1).await;
    let peer = app.welcomed().await;
    assert_eq!(peer["state"], "online");
    assert_eq!(peer["raw"], true);

    // The raw client sees the payloads of DATA, as text or binary, and nothing else.
    app.send(sync(v1wire::sid(APP_KEY), 1, 1, 1, None)).await;
    app.send(data(1, true, b"hello")).await;
    app.send(ack(v1wire::sid(WEB_KEY), 3)).await;
    app.send(data(0, false, &[7, 7])).await;
    assert_eq!(raw.recv_text().await, "hello");
    assert_eq!(raw.recv_binary().await, vec![7, 7]);

    // The v1 client gets the raw client's messages as unnumbered DATA.
    raw.send_binary(&[1, 2, 3]).await;
    raw.send_text("hi").await;
    assert_eq!(app.recv().await, vec![0x01, 0x00, 1, 2, 3]);
    assert_eq!(app.recv().await, vec![0x02, 0x00, b'h', b'i']);
    node.shutdown().await;
}

#[tokio::test]
async fn a_batch_reaches_a_v1_peer_untouched_and_a_raw_peer_as_one_message_per_data() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let (mut app, mut web) = v1wire::welcomed_pair(&node, &id).await;
    app.send(sync(v1wire::sid(APP_KEY), 1, 1, 1, None)).await;
    let burst = batch(&[
        data(1, true, "héllo".as_bytes()),
        ack(v1wire::sid(WEB_KEY), 0),
        data(2, false, &[0, 255]),
        data(3, false, b""),
    ]);
    app.send(burst.clone()).await;
    web.recv().await; // the sync
    assert_eq!(web.recv().await, burst, "relayed byte for byte");
    drop(web);
    node.shutdown().await;

    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut raw = node.connect(Role::Web, &id).await;
    let mut app = v1wire::connect(&node.url(Role::App, id.as_str()), APP_KEY, 1).await;
    app.welcomed().await;
    app.send(sync(v1wire::sid(APP_KEY), 1, 1, 1, None)).await;
    app.send(burst).await;
    app.send(batch(&[data(0, true, b"last")])).await;
    assert_eq!(raw.recv_text().await, "héllo");
    assert_eq!(raw.recv_binary().await, vec![0, 255]);
    assert_eq!(raw.recv_binary().await, Vec::<u8>::new());
    assert_eq!(
        raw.recv_text().await,
        "last",
        "the ACK was dropped, nothing else"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_newer_generation_takes_the_slot_whatever_the_policy_and_an_older_one_is_refused() {
    let node = TestNode::start(|config| config.outer.on_duplicate = DuplicatePolicy::Reject).await;
    let id = random_channel_id();
    let base = node.url(Role::App, id.as_str());
    let mut first = v1wire::connect(&base, APP_KEY, 1).await;
    first.welcomed().await;
    let mut second = v1wire::connect(&base, APP_KEY, 2).await;
    second.welcomed().await;
    assert!(matches!(first.ending().await, Ending::Close(4001, _)));

    let refused = v1wire::try_connect(&base, APP_KEY, 2).await.unwrap_err();
    assert!(refused.starts_with("409"), "{refused}");
    assert!(
        refused.contains("newer connection of this client"),
        "{refused}"
    );
    let refused = v1wire::try_connect(&base, APP_KEY, 1).await.unwrap_err();
    assert!(refused.starts_with("409"), "{refused}");
    // Another client is the duplicate policy's to decide: `reject` here.
    let refused = v1wire::try_connect(&base, WEB_KEY, 9).await.unwrap_err();
    assert!(refused.contains("already has a connected app"), "{refused}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_v1_offer_without_a_valid_identity_is_refused_before_the_upgrade() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let base = node.url(Role::App, id.as_str());
    let refused = v1wire::try_connect(&format!("{base}&key=xyz"), APP_KEY, 1)
        .await
        .unwrap_err();
    assert!(refused.starts_with("400"), "{refused}");
    assert!(refused.contains("repeated"), "{refused}");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{base}&gen=1"
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wspair.v1".parse().unwrap());
    let err = tokio_tungstenite::connect_async(request).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("expected an HTTP refusal, got {err}");
    };
    assert_eq!(response.status().as_u16(), 400);
    let body = String::from_utf8_lossy(response.body().as_ref().unwrap()).into_owned();
    assert!(body.contains("`key`"), "{body}");
    node.shutdown().await;
}

#[tokio::test]
async fn with_v1_off_an_offer_is_served_as_a_raw_client() {
    let node = TestNode::start(|config| config.v1.enabled = false).await;
    let id = random_channel_id();
    let url = v1wire::url(&node.url(Role::App, id.as_str()), APP_KEY, 1);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wspair.v1".parse().unwrap());
    // The answer carries no subprotocol, which a client that insists on one must refuse.
    let err = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("subprotocol"),
        "{err}"
    );
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    app.send_text("raw as ever").await;
    assert_eq!(web.recv_text().await, "raw as ever");
    node.shutdown().await;
}

#[tokio::test]
async fn malformed_v1_frames_close_with_4007_and_the_node_keeps_serving() {
    let node = TestNode::start(|_| {}).await;
    let bad_frames: [Option<Vec<u8>>; 11] = [
        None, // a text message
        Some(vec![]),
        Some(vec![0x42, 1]),
        Some(vec![0x05, b'{', b'}']),
        Some(vec![0x01, 0x80]),
        Some(vec![0x04, b'x']),
        // BATCHes: empty, a frame past the end, an empty frame, a PEER frame, a bad DATA.
        Some(vec![0x07]),
        Some(vec![0x07, 0x05, 0x01, 0x01, b'a']),
        Some(vec![0x07, 0x02, 0x01, 0x00, 0x00]),
        Some(batch(&[data(0, false, b"x"), vec![0x04, b'{', b'}']])),
        Some(batch(&[data(0, true, &[0xff])])),
    ];
    for bad in bad_frames {
        let id = random_channel_id();
        let mut app = v1wire::connect(&node.url(Role::App, id.as_str()), APP_KEY, 1).await;
        app.welcomed().await;
        match &bad {
            None => app.send_text("text is not v1").await,
            Some(frame) => app.send(frame.clone()).await,
        }
        match app.ending().await {
            Ending::Close(4007, _) => {}
            other => panic!("{bad:?} ended with {other:?}"),
        }
    }
    let id = random_channel_id();
    let (_app, _web) = crate::harness::client::exchange(
        node.connect(Role::App, &id).await,
        node.connect(Role::Web, &id).await,
        10,
    )
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_client_beyond_its_window_is_closed_with_4008() {
    let node = TestNode::start(|config| config.v1.window = 4).await;
    let id = random_channel_id();
    let base = node.url(Role::App, id.as_str());
    let web_base = node.url(Role::Web, id.as_str());
    let mut web = v1wire::connect(&web_base, WEB_KEY, 1).await;
    web.welcomed().await;

    // Numbered DATA before sync.
    let mut app = v1wire::connect(&base, APP_KEY, 1).await;
    app.welcomed().await;
    app.send(data(1, false, b"x")).await;
    assert!(matches!(app.ending().await, Ending::Close(4008, _)));

    // Five outstanding where four are allowed; the peer's ACK opens the window again.
    let mut app = v1wire::connect(&base, APP_KEY, 2).await;
    app.welcomed().await;
    app.send(sync(v1wire::sid(APP_KEY), 2, 1, 1, None)).await;
    for seq in 1..=4 {
        app.send(data(seq, false, b"x")).await;
    }
    web.send(ack(v1wire::sid(APP_KEY), 1)).await;
    // The ACK reaches the app's node before the app sends on.
    loop {
        let frame = app.recv().await;
        if frame[0] == 0x03 {
            break;
        }
    }
    app.send(data(5, false, b"x")).await;
    app.send(data(6, false, b"x")).await;
    assert!(matches!(app.ending().await, Ending::Close(4008, _)));

    // Skipping a position.
    let mut app = v1wire::connect(&base, APP_KEY, 3).await;
    app.welcomed().await;
    app.send(sync(v1wire::sid(APP_KEY), 3, 7, 7, None)).await;
    app.send(data(9, false, b"x")).await;
    assert!(matches!(app.ending().await, Ending::Close(4008, _)));
    node.shutdown().await;
}

#[tokio::test]
async fn each_data_of_a_batch_counts_against_the_window_and_a_batched_ack_frees_it() {
    let node = TestNode::start(|config| config.v1.window = 4).await;
    let id = random_channel_id();
    let (mut app, mut web) = v1wire::welcomed_pair(&node, &id).await;
    // Four outstanding of four, in one BATCH.
    app.send(sync(v1wire::sid(APP_KEY), 1, 7, 7, None)).await;
    let five: Vec<Vec<u8>> = (7..12).map(|seq| data(seq, false, b"x")).collect();
    app.send(batch(&five[..4])).await;
    // A BATCH holding the peer's ACK frees the window, as an ACK alone does.
    web.send(batch(&[ack(v1wire::sid(APP_KEY), 8), data(0, false, b"y")]))
        .await;
    loop {
        let frame = app.recv().await;
        if frame[0] == 0x07 {
            break;
        }
    }
    app.send(batch(&five[4..])).await;
    app.send(data(12, false, b"x")).await;
    // Both relayed: the app is within its window (four outstanding, 9 to 12).
    let mut relayed = Vec::new();
    while relayed.len() < 4 {
        relayed.push(web.recv().await);
    }
    assert_eq!(relayed[3], data(12, false, b"x"), "{relayed:?}");
    app.send(sync(v1wire::sid(APP_KEY), 1, 9, 13, None)).await;
    app.send(batch(
        &(13..16)
            .map(|seq| data(seq, false, b"x"))
            .collect::<Vec<_>>(),
    ))
    .await;
    assert!(matches!(app.ending().await, Ending::Close(4008, _)));
    node.shutdown().await;
}

#[tokio::test]
async fn identities_cross_nodes_and_an_older_generation_is_refused_on_any_node() {
    let redis = RedisServer::start();
    let a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut web = v1wire::connect(&a.url(Role::Web, id.as_str()), WEB_KEY, 1).await;
    web.welcomed().await;
    let mut app = v1wire::connect(&b.url(Role::App, id.as_str()), APP_KEY, 4).await;
    let peer = app.welcomed().await;
    assert_eq!(peer["sid"], format!("{:016x}", v1wire::sid(WEB_KEY)));
    let peer = web.recv_server().await;
    assert_eq!(peer["sid"], format!("{:016x}", v1wire::sid(APP_KEY)));
    assert_eq!(peer["gen"], 4);

    // The same client's next connection, on the other node, takes over.
    let mut moved = v1wire::connect(&a.url(Role::App, id.as_str()), APP_KEY, 5).await;
    assert_eq!(
        moved.welcomed().await["sid"],
        format!("{:016x}", v1wire::sid(WEB_KEY))
    );
    assert!(matches!(app.ending().await, Ending::Close(4001, _)));
    // The web is told of the new session.
    loop {
        let peer = web.recv_server().await;
        if peer["state"] == "online" && peer["gen"] == 5 {
            break;
        }
    }
    let refused = v1wire::try_connect(&b.url(Role::App, id.as_str()), APP_KEY, 4)
        .await
        .unwrap_err();
    assert!(refused.starts_with("409"), "{refused}");
    moved.send(sync(v1wire::sid(APP_KEY), 5, 1, 1, None)).await;
    moved.send(data(1, false, b"across")).await;
    assert_eq!(web.recv().await[0], 0x04);
    assert_eq!(web.recv().await, data(1, false, b"across"));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_draining_node_sends_goaway_refuses_newcomers_and_ends_once_its_clients_moved() {
    let redis = RedisServer::start();
    let a = TestNode::start_in_cluster(vec![redis.url()], |config| {
        config.drain.spread = std::time::Duration::from_millis(300);
        config.drain.timeout = std::time::Duration::from_secs(20);
    })
    .await;
    let b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut web = v1wire::connect(&b.url(Role::Web, id.as_str()), WEB_KEY, 1).await;
    web.welcomed().await;
    let mut app = v1wire::connect(&a.url(Role::App, id.as_str()), APP_KEY, 1).await;
    app.welcomed().await;
    assert_eq!(web.recv_server().await["state"], "online");
    let raw_id = random_channel_id();
    let mut raw = a.connect(Role::App, &raw_id).await;

    let started = std::time::Instant::now();
    a.begin_shutdown();
    // Raw clients keep today's 1001, at once.
    assert!(matches!(raw.ending().await, Ending::Close(1001, _)));
    let goaway = app.recv_server().await;
    assert_eq!(goaway["t"], "goaway", "{goaway}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let refused = v1wire::try_connect(&a.url(Role::Web, random_channel_id().as_str()), WEB_KEY, 1)
        .await
        .unwrap_err();
    assert!(
        refused.starts_with("503") && refused.contains("draining"),
        "{refused}"
    );

    // The client moves: its next connection, on the other node, takes the slot.
    let mut moved = v1wire::connect(&b.url(Role::App, id.as_str()), APP_KEY, 2).await;
    assert_eq!(moved.welcomed().await["state"], "online");
    assert!(matches!(app.ending().await, Ending::Close(4001, _)));
    a.shutdown().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the drain ended once the client moved, not at drain.timeout"
    );
    moved.send(sync(v1wire::sid(APP_KEY), 2, 1, 1, None)).await;
    moved.send(data(1, false, b"after the move")).await;
    loop {
        let frame = web.recv().await;
        if frame == data(1, false, b"after the move") {
            break;
        }
    }
    b.shutdown().await;
}

#[tokio::test]
async fn a_v1_client_that_does_not_move_is_closed_with_1001_at_the_drain_timeout() {
    let node = TestNode::start(|config| {
        config.drain.spread = std::time::Duration::from_millis(100);
        config.drain.timeout = std::time::Duration::from_millis(800);
    })
    .await;
    let id = random_channel_id();
    let mut app = v1wire::connect(&node.url(Role::App, id.as_str()), APP_KEY, 1).await;
    app.welcomed().await;
    node.begin_shutdown();
    assert_eq!(app.recv_server().await["t"], "goaway");
    assert!(matches!(app.ending().await, Ending::Close(1001, _)));
    node.shutdown().await;
}
