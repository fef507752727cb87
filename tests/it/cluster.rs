//! Cluster mode with a real `redis-server`: pairs across nodes, duplicates, failures of nodes,
//! links and Redis.

use std::time::Duration;

use wspair::Role;
use wspair::config::DuplicatePolicy;

use crate::harness::client::Ending;
use crate::harness::http::{UPGRADE_HEADERS, abandoned_upgrade, request};
use crate::harness::proxy::Proxy;
use crate::harness::redis::RedisServer;
use crate::harness::{TestNode, random_channel_id, read, wait_until};

/// A Redis, two nodes on it, and a pair with its app on node A and its web on node B.
struct Cluster {
    redis: RedisServer,
    node_a: TestNode,
    node_b: TestNode,
    id: wspair::ChannelId,
    app: crate::harness::Client,
    web: crate::harness::Client,
}

impl Cluster {
    async fn with_a_pair() -> Cluster {
        Cluster::with_a_pair_configured(|_| {}).await
    }

    /// As [`Cluster::with_a_pair`], with `configure` applied to both nodes.
    async fn with_a_pair_configured(configure: impl Fn(&mut wspair::Config) + Copy) -> Cluster {
        let redis = RedisServer::start();
        let node_a = TestNode::start_in_cluster(vec![redis.url()], configure).await;
        let node_b = TestNode::start_in_cluster(vec![redis.url()], configure).await;
        let id = random_channel_id();
        let app = node_a.connect(Role::App, &id).await;
        let web = node_b.connect(Role::Web, &id).await;
        Cluster {
            redis,
            node_a,
            node_b,
            id,
            app,
            web,
        }
    }
}

#[tokio::test]
async fn app_and_web_on_different_nodes_relay_both_ways() {
    let Cluster {
        redis: _redis,
        node_a,
        node_b,
        id: _,
        mut app,
        mut web,
    } = Cluster::with_a_pair().await;
    app.send_text("hello across nodes").await;
    assert_eq!(web.recv_text().await, "hello across nodes");
    web.send_binary(b"and back").await;
    assert_eq!(app.recv_binary().await, b"and back");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_messages_each_way_cross_nodes_arrive_in_order() {
    let Cluster {
        redis: _redis,
        node_a,
        node_b,
        id: _,
        app,
        web,
    } = Cluster::with_a_pair().await;
    crate::harness::client::exchange(app, web, 10_000).await;
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn relaying_costs_no_redis_command_per_message() {
    let Cluster {
        redis,
        node_a,
        node_b,
        id: _,
        app,
        web,
    } = Cluster::with_a_pair().await;
    // Heartbeats are the only scripts that run ZADD; every other script, GET or SET is route
    // work, and relaying must need none.
    let route_commands = || {
        let calls = redis.calls();
        let count = |command: &str| calls.get(command).copied().unwrap_or(0);
        count("get") + count("set") + count("evalsha") + count("eval") - count("zadd")
    };
    let before = route_commands();
    crate::harness::client::exchange(app, web, 2_000).await;
    let during = route_commands() - before;
    assert_eq!(during, 0, "route commands while relaying 4 000 messages");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// A connect is one script (claim and the peer's route), a disconnect one (compare-and-delete):
/// Redis sees no other command from either, apart from the heartbeats.
#[tokio::test]
async fn a_connect_and_a_disconnect_cost_one_redis_round_trip_each() {
    let redis = RedisServer::start();
    let node = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let connect_and_leave = || async {
        let id = random_channel_id();
        let app = node.connect(Role::App, &id).await;
        app.close().await;
        wait_until("the route to be released", || {
            redis
                .cli(&["EXISTS", &format!("wspair:{{{id}}}:app")])
                .is_some_and(|exists| exists.trim() == "0")
        })
        .await;
    };
    // The node loads its scripts once Redis answers, so even the first connect runs its script
    // by hash (a call that found none would load it and run it again: three round trips).
    wait_until("the node to load its scripts", || {
        redis.calls().get("script|load").copied().unwrap_or(0) >= 5
    })
    .await;
    let before = redis.calls();
    connect_and_leave().await;
    let after = redis.calls();
    let delta = |command: &str| {
        after.get(command).copied().unwrap_or(0) - before.get(command).copied().unwrap_or(0)
    };
    // Heartbeats run one script each, the only ones with a ZADD.
    let scripts = delta("evalsha") + delta("eval") - delta("zadd");
    assert_eq!(scripts, 2, "scripts for one connect and one disconnect");
    assert_eq!(
        delta("script|load"),
        0,
        "scripts loaded again on the first calls"
    );
    // Two inside the claim (the route and the peer's), one inside the release.
    assert_eq!(delta("get"), 3, "GETs, all of them inside the scripts");
    let inside_scripts = ["set", "del", "time", "zadd", "zscore", "zremrangebyscore"];
    let by_the_test = ["exists", "info"];
    let other: Vec<_> = after
        .keys()
        .filter(|command| {
            !["evalsha", "eval", "get", "zrangebyscore"].contains(&command.as_str())
                && !inside_scripts.contains(&command.as_str())
                && !by_the_test.contains(&command.as_str())
                && delta(command) > 0
        })
        .collect();
    assert!(other.is_empty(), "other commands: {other:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn duplicate_on_another_node_with_reject_answers_409() {
    let redis = RedisServer::start();
    let reject = |c: &mut wspair::Config| c.outer.on_duplicate = DuplicatePolicy::Reject;
    let node_a = TestNode::start_in_cluster(vec![redis.url()], reject).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], reject).await;
    let id = random_channel_id();
    let mut app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    let response = request(
        node_b.addr,
        "GET",
        &format!("/channel?type=app&channelId={id}"),
        UPGRADE_HEADERS,
    )
    .await;
    assert_eq!(response.status, 409);
    assert_eq!(
        response.body.trim(),
        format!("channel {id} already has a connected app")
    );
    app.send_text("first app still paired").await;
    assert_eq!(web.recv_text().await, "first app still paired");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// Regression: a replacement that gave up mid-upgrade had already evicted the old session
/// (here: a holder on another node, then one on the same node), leaving its pair broken.
#[tokio::test]
async fn a_replacement_that_gives_up_mid_upgrade_leaves_the_pair_across_nodes_working() {
    let Cluster {
        redis: _redis,
        node_a,
        node_b,
        id,
        mut app,
        mut web,
    } = Cluster::with_a_pair().await;
    let target = format!("/channel?type=app&channelId={id}");
    // The displaced app is on another node, its peer here; then both on the same node.
    for (n, node) in [&node_b, &node_a].into_iter().enumerate() {
        abandoned_upgrade(node.addr, &target).await;
        wait_until("the abandoned upgrade to fail", || {
            read(&node.metrics.upgrades_failed) == 1
        })
        .await;
        app.send_text(&format!("app still paired {n}")).await;
        assert_eq!(web.recv_text().await, format!("app still paired {n}"));
        web.send_text(&format!("web still paired {n}")).await;
        assert_eq!(app.recv_text().await, format!("web still paired {n}"));
    }
    assert_eq!(read(&node_a.metrics.sessions_replaced), 0);
    assert_eq!(read(&node_b.metrics.sessions_replaced), 0);
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn duplicate_on_another_node_with_replace_closes_the_old_one_with_4001() {
    let redis = RedisServer::start();
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_c = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut old_app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    let mut new_app = node_c.connect(Role::App, &id).await;
    assert_eq!(
        old_app.ending().await,
        Ending::Close(4001, "replaced by a newer connection".into())
    );
    web.send_text("to the new app").await;
    assert_eq!(new_app.recv_text().await, "to the new app");
    new_app.send_text("from the new app").await;
    assert_eq!(web.recv_text().await, "from the new app");
    node_a.shutdown().await;
    node_b.shutdown().await;
    node_c.shutdown().await;
}

#[tokio::test]
async fn redis_down_refuses_new_connections_with_503_and_existing_pairs_keep_relaying() {
    let Cluster {
        mut redis,
        node_a,
        node_b,
        id: _,
        mut app,
        mut web,
    } = Cluster::with_a_pair().await;
    redis.stop();
    let other = random_channel_id();
    let response = request(
        node_a.addr,
        "GET",
        &format!("/channel?type=app&channelId={other}"),
        UPGRADE_HEADERS,
    )
    .await;
    assert_eq!(response.status, 503);
    assert!(
        response.body.starts_with("registry unavailable: "),
        "{}",
        response.body
    );
    // Past several heartbeats and node-ttls without Redis, the pair still relays.
    tokio::time::sleep(node_a.config.registry.node_ttl * 2).await;
    for i in 0..100 {
        app.send_text(&format!("during outage {i}")).await;
        assert_eq!(web.recv_text().await, format!("during outage {i}"));
    }
    web.send_text("back").await;
    assert_eq!(app.recv_text().await, "back");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// Regression: while Redis was unreachable, a second client of a connected role evicted the
/// working session (4001) before its own claim was answered 503.
#[tokio::test]
async fn a_duplicate_refused_with_503_while_redis_is_down_leaves_the_working_session() {
    let Cluster {
        mut redis,
        node_a,
        node_b,
        id,
        mut app,
        mut web,
    } = Cluster::with_a_pair().await;
    redis.stop();
    let response = request(
        node_a.addr,
        "GET",
        &format!("/channel?type=app&channelId={id}"),
        UPGRADE_HEADERS,
    )
    .await;
    assert_eq!(response.status, 503);
    app.send_text("still paired").await;
    assert_eq!(web.recv_text().await, "still paired");
    web.send_text("and back").await;
    assert_eq!(app.recv_text().await, "and back");
    assert_eq!(read(&node_a.metrics.sessions_replaced), 0);
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// Regression: a claim whose peer lookup failed after its route was written left that route
/// in Redis (for 24 h), naming a session that never started.
#[tokio::test]
async fn a_claim_that_fails_after_writing_its_route_removes_it() {
    let redis = RedisServer::start();
    let node = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    // A key of the wrong type makes the peer lookup fail, after the app's route is written.
    let web_key = format!("wspair:{{{id}}}:web");
    redis
        .cli(&["LPUSH", &web_key, "not-a-route"])
        .expect("redis-cli");
    let response = request(
        node.addr,
        "GET",
        &format!("/channel?type=app&channelId={id}"),
        UPGRADE_HEADERS,
    )
    .await;
    assert_eq!(response.status, 503);
    let app_key = format!("wspair:{{{id}}}:app");
    wait_until("the app's route to be removed", || {
        redis.cli(&["EXISTS", &app_key]).as_deref().map(str::trim) == Some("0")
    })
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn redis_restarted_empty_keeps_pairs_and_every_node_registers_again() {
    let Cluster {
        mut redis,
        node_a,
        node_b,
        id,
        mut app,
        mut web,
    } = Cluster::with_a_pair().await;
    redis.restart();
    assert_eq!(redis.cli(&["DBSIZE"]).unwrap().trim(), "0");
    app.send_text("after the restart").await;
    assert_eq!(web.recv_text().await, "after the restart");
    // The nodes notice at their next heartbeat and write their routes again.
    let app_key = format!("wspair:{{{id}}}:app");
    wait_until("the app's route to be registered again", || {
        redis
            .cli(&["EXISTS", &app_key])
            .is_some_and(|reply| reply.trim() == "1")
    })
    .await;
    // A new web on node B finds the app through the re-registered route.
    drop(web);
    let mut web = node_b.connect(Role::Web, &id).await;
    app.send_text("to the new web").await;
    assert_eq!(web.recv_text().await, "to the new web");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// Separate processes of the built binary: `kill -9` one, and its clients' peers see the route
/// vanish within `registry.node-ttl`; the client that reconnects to another node re-pairs.
#[tokio::test]
async fn a_killed_node_is_forgotten_within_node_ttl_and_its_clients_re_pair_elsewhere() {
    use crate::harness::process::ProcessNode;
    let redis = RedisServer::start();
    let url = redis.url();
    let args = [
        "--registry-redis",
        url.as_str(),
        "--inner-ip",
        "127.0.0.1",
        "--inner-port",
        "0",
        "--inner-secret",
        crate::harness::SECRET,
        "--registry-node-ttl",
        "5s",
    ];
    let mut node_a = ProcessNode::start(&args);
    let node_b = ProcessNode::start(&args);
    let id = random_channel_id();
    let mut app = crate::harness::Client::connect(&node_a.url(Role::App, &id)).await;
    let mut web = crate::harness::Client::connect(&node_b.url(Role::Web, &id)).await;
    app.send_text("before the crash").await;
    assert_eq!(web.recv_text().await, "before the crash");

    node_a.kill9();
    let killed_at = std::time::Instant::now();
    // The web keeps talking; once node B has forgotten node A, its messages count as having
    // no peer.
    let baseline = node_b
        .counter("wspair_messages_dropped_no_peer_total")
        .await;
    loop {
        web.send_text("anyone there?").await;
        if node_b
            .counter("wspair_messages_dropped_no_peer_total")
            .await
            > baseline
        {
            break;
        }
        // node-ttl after the node's last heartbeat, which came before the kill; the second
        // beyond it is for this check's own polling and a loaded machine's scheduling.
        assert!(
            killed_at.elapsed() < Duration::from_secs(6),
            "route still live 6 s after kill -9 with registry.node-ttl 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut app = crate::harness::Client::connect(&node_b.url(Role::App, &id)).await;
    app.send_text("re-paired on node B").await;
    assert_eq!(web.recv_text().await, "re-paired on node B");
}

#[tokio::test]
async fn a_link_with_the_wrong_secret_is_refused_and_counted() {
    use wspair::inner::{auth, codec::InnerCodec};
    let redis = RedisServer::start();
    let node = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let stream = tokio::net::TcpStream::connect(node.inner_addr.unwrap())
        .await
        .unwrap();
    let mut framed = tokio_util::codec::Framed::new(stream, InnerCodec::new(10_240));
    let impostor = wspair::node::NodeInfo {
        id: wspair::node::NodeId::from_u64(7).unwrap(),
        advertise: "127.0.0.1:1".into(),
        window: 16,
        version: "0".into(),
    };
    let result = auth::dial(&mut framed, &impostor, b"not-the-secret-at-all", &[]).await;
    assert!(matches!(result, Err(auth::AuthError::BadMac)), "{result:?}");
    drop(framed);
    let metrics = node.metrics.clone();
    wait_until("the refusal to be counted", || {
        crate::harness::read(&metrics.links_refused) == 1
    })
    .await;
    node.shutdown().await;
}

/// Reads until the other side closes the connection; fails if it stays open for `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection was still open after {within:?}"
    );
}

/// Regression: before authenticating, a connection could announce a frame as long as the
/// largest message (up to 64 MiB reserved from the length prefix) and be read for the whole
/// handshake deadline. A handshake frame over 1 KiB now cuts it at once.
#[tokio::test]
async fn an_unauthenticated_frame_over_the_handshake_limit_is_cut_at_once() {
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start();
    let node = TestNode::start_in_cluster(vec![redis.url()], |c| {
        c.inner.connect_timeout = Duration::from_secs(10);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(node.inner_addr.unwrap())
        .await
        .unwrap();
    stream.write_all(&5000u32.to_be_bytes()).await.unwrap();
    stream.write_all(&[1u8; 100]).await.unwrap();
    closed_within(&mut stream, Duration::from_secs(2)).await;
    assert_eq!(read(&node.metrics.links_refused), 1);
    node.shutdown().await;
}

/// Regression: any number of connections could sit on the inner port unauthenticated, each
/// with a task, a buffer and a timer, until its handshake deadline.
#[tokio::test]
async fn inner_connections_beyond_max_handshakes_are_cut_and_links_still_form() {
    let redis = RedisServer::start();
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |c| {
        c.inner.max_handshakes = 2;
        c.inner.connect_timeout = Duration::from_secs(10);
    })
    .await;
    let inner = node_a.inner_addr.unwrap();
    let idle_1 = tokio::net::TcpStream::connect(inner).await.unwrap();
    let idle_2 = tokio::net::TcpStream::connect(inner).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(inner).await.unwrap();
    closed_within(&mut third, Duration::from_secs(2)).await;
    assert_eq!(read(&node_a.metrics.links_refused), 1);
    // Once the idle ones are gone, another node links to this one.
    drop((idle_1, idle_2));
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut app = node_b.connect(Role::App, &id).await;
    let mut web = node_a.connect(Role::Web, &id).await;
    app.send_text("across").await;
    assert_eq!(web.recv_text().await, "across");
    web.send_text("and back").await;
    assert_eq!(app.recv_text().await, "and back");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn garbage_and_an_oversized_frame_close_only_that_link() {
    use futures::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wspair::inner::{auth, codec::InnerCodec};
    let Cluster {
        redis: _redis,
        node_a,
        node_b,
        id: _,
        mut app,
        mut web,
    } = Cluster::with_a_pair().await;
    let inner = node_a.inner_addr.unwrap();

    // Garbage instead of a handshake.
    let mut stream = tokio::net::TcpStream::connect(inner).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\n\r\n and more garbage")
        .await
        .unwrap();
    let mut buffer = [0u8; 64];
    let n = tokio::time::timeout(crate::harness::EVENT_TIMEOUT, stream.read(&mut buffer))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the node closes the connection");

    // An authenticated link that announces a frame far over the limit.
    let stream = tokio::net::TcpStream::connect(inner).await.unwrap();
    let mut framed = tokio_util::codec::Framed::new(stream, InnerCodec::new(10_240));
    let insider = wspair::node::NodeInfo {
        id: wspair::node::NodeId::from_u64(9).unwrap(),
        advertise: "127.0.0.1:1".into(),
        window: 16,
        version: "0".into(),
    };
    auth::dial(
        &mut framed,
        &insider,
        crate::harness::SECRET.as_bytes(),
        &[],
    )
    .await
    .unwrap();
    framed.flush().await.unwrap();
    let mut stream = framed.into_inner();
    stream
        .write_all(&(100_000_000u32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&[3u8; 64]).await.unwrap();
    let n = tokio::time::timeout(crate::harness::EVENT_TIMEOUT, stream.read(&mut buffer))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the node closes the link");
    assert_eq!(crate::harness::read(&node_a.metrics.links_malformed), 1);
    assert_eq!(crate::harness::read(&node_a.metrics.links_refused), 1);

    // The node and its real links keep serving.
    app.send_text("still relaying").await;
    assert_eq!(web.recv_text().await, "still relaying");
    web.send_text("both ways").await;
    assert_eq!(app.recv_text().await, "both ways");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn three_nodes_share_six_links_for_any_number_of_pairs() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestNode::start_in_cluster(vec![redis.url()], |_| {}).await);
    }
    let mut clients = Vec::new();
    for n in 0..60 {
        let id = random_channel_id();
        let app_node = &nodes[n % 3];
        let web_node = &nodes[(n + 1) % 3];
        let mut app = app_node.connect(Role::App, &id).await;
        let mut web = web_node.connect(Role::Web, &id).await;
        app.send_text("ping").await;
        assert_eq!(web.recv_text().await, "ping");
        web.send_text("pong").await;
        assert_eq!(app.recv_text().await, "pong");
        clients.push((app, web));
    }
    let links: usize = nodes.iter().map(|node| node.router.n_links()).sum();
    assert_eq!(links, 6, "one outbound link per ordered pair of nodes");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_three_master_redis_cluster_works_as_the_registry() {
    let redis = crate::harness::redis::RedisCluster::start();
    let node_a = TestNode::start_in_cluster(redis.urls(), |_| {}).await;
    let node_b = TestNode::start_in_cluster(redis.urls(), |_| {}).await;
    // Channel ids hash to slots on every master.
    for _ in 0..10 {
        let id = random_channel_id();
        let mut app = node_a.connect(Role::App, &id).await;
        let mut web = node_b.connect(Role::Web, &id).await;
        app.send_text("through a redis cluster").await;
        assert_eq!(web.recv_text().await, "through a redis cluster");
        web.send_text("and back").await;
        assert_eq!(app.recv_text().await, "and back");
    }
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// A receiver on node B that stops reading throttles its sender on node A through the link's
/// credit, while 100 other cross-node pairs on the same link keep flowing.
#[tokio::test]
async fn a_stalled_remote_reader_throttles_only_its_sender_across_the_link() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Bytes;
    const MESSAGE_BYTES: usize = 8 * 1024;
    let redis = RedisServer::start();
    let small_queue = |c: &mut wspair::Config| c.outer.send_queue = 64;
    let node_a = TestNode::start_in_cluster(vec![redis.url()], small_queue).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], small_queue).await;
    let id = random_channel_id();
    let sender = node_a.connect(Role::App, &id).await;
    let _sleeper = node_b.connect(Role::Web, &id).await;

    let (mut sink, _stream) = sender.ws.split();
    let payload = Bytes::from(vec![b'x'; MESSAGE_BYTES]);
    let sent = crate::harness::client::send_until_throttled(
        &mut sink,
        &payload,
        Duration::from_millis(300),
    )
    .await;
    // Bounded by the credit window, the receiver's queue and the sockets' buffers.
    assert!(
        sent * MESSAGE_BYTES < 64 * 1024 * 1024,
        "{sent} messages buffered"
    );

    // 100 other pairs across the same two nodes, hence the same links, keep flowing.
    let mut pairs = Vec::new();
    for _ in 0..100 {
        let id = random_channel_id();
        pairs.push((
            node_a.connect(Role::App, &id).await,
            node_b.connect(Role::Web, &id).await,
        ));
    }
    let started = std::time::Instant::now();
    let exchanges = pairs
        .into_iter()
        .map(|(app, web)| crate::harness::client::exchange(app, web, 100));
    futures::future::join_all(exchanges).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < crate::harness::EVENT_TIMEOUT,
        "100 pairs took {elapsed:?}"
    );
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// Credit comes back in batches of half the window; with the smallest windows (one message,
/// and three, which hold back one credit) a long exchange across nodes never stalls.
#[tokio::test]
async fn tiny_credit_windows_never_stall_a_cross_node_pair() {
    for window in [1, 3] {
        let set_window = move |c: &mut wspair::Config| c.outer.send_queue = window;
        let Cluster {
            redis: _redis,
            node_a,
            node_b,
            id: _,
            app,
            web,
        } = Cluster::with_a_pair_configured(set_window).await;
        crate::harness::client::exchange(app, web, 500).await;
        node_a.shutdown().await;
        node_b.shutdown().await;
    }
}

/// Credit a receiving session still owes its previous peer reaches the new peer's sender when
/// the peer reconnects on the same node. Senders start a batch below the window, so even then
/// a receiver that stops reading never gets more messages than its queue holds: none dropped.
#[tokio::test]
async fn credit_owed_to_a_previous_peer_never_overflows_a_stalled_receiver() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Bytes;
    const MESSAGE_BYTES: usize = 8 * 1024;
    let redis = RedisServer::start();
    let window = |c: &mut wspair::Config| c.outer.send_queue = 64;
    let node_a = TestNode::start_in_cluster(vec![redis.url()], window).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], window).await;
    let id = random_channel_id();
    let mut web = node_b.connect(Role::Web, &id).await;
    // 31 messages written by the web session leave it owing 31 credits (its batch is 32).
    let mut first_app = node_a.connect(Role::App, &id).await;
    for i in 0..31 {
        first_app.send_text(&format!("first-{i}")).await;
        assert_eq!(web.recv_text().await, format!("first-{i}"));
    }
    first_app.close().await;
    wait_until("node A to release the first app", || {
        node_a.router.hub.counts().0 == 0
    })
    .await;

    let app = node_a.connect(Role::App, &id).await;
    let (mut sink, _stream) = app.ws.split();
    let payload = Bytes::from(vec![b'x'; MESSAGE_BYTES]);
    let sent = crate::harness::client::send_until_throttled(
        &mut sink,
        &payload,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        crate::harness::read(&node_b.metrics.messages_dropped_remote),
        0,
        "messages dropped at the stalled receiver's full queue"
    );
    for n in 0..sent {
        let message = web.recv_binary().await;
        assert_eq!(message.len(), MESSAGE_BYTES, "message {n}");
    }
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// A node that loses Redis alone, long enough for the others to time it out while its
/// clients stay connected, announces its sessions again when it reaches Redis again, and its
/// pairs join up without reconnecting.
#[tokio::test]
async fn a_node_timed_out_while_alive_rejoins_its_pairs_when_it_registers_again() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let node_a = TestNode::start_in_cluster(vec![format!("redis://{}", proxy.addr)], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    app.send_text("before").await;
    assert_eq!(web.recv_text().await, "before");

    // Node A loses Redis; node B times it out and forgets its sessions.
    proxy.cut();
    let dropped_before = crate::harness::read(&node_b.metrics.messages_dropped_no_peer);
    let started = std::time::Instant::now();
    loop {
        web.send_text("is anyone there").await;
        if crate::harness::read(&node_b.metrics.messages_dropped_no_peer) > dropped_before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node B never forgot node A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Node A reaches Redis again, finds its registration gone, registers again and announces
    // its sessions; the pair joins up.
    proxy.restore();
    let started = std::time::Instant::now();
    loop {
        web.send_text("together again").await;
        let got = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                if app.recv_text().await == "together again" {
                    return;
                }
            }
        })
        .await;
        if got.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the pair did not join up again"
        );
    }
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// Regression: the receiving session returned credit in batches sized from `outer.send-queue`
/// while the window it advertised came from `outer.send-queue-bytes / outer.max-frame-size`;
/// with 64 KiB messages allowed, a sender got 9 credits and waited for a batch of 32 for ever.
#[tokio::test]
async fn a_pair_across_nodes_never_stalls_on_credit_when_large_messages_are_allowed() {
    let large = |c: &mut wspair::Config| c.outer.max_frame_size = 65536;
    let Cluster {
        redis: _redis,
        node_a,
        node_b,
        id: _,
        app,
        web,
    } = Cluster::with_a_pair_configured(large).await;
    crate::harness::client::exchange(app, web, 200).await;
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// Regression: with both clients on one node, a replacement that gave up mid-upgrade on
/// another node evicted the working app (its peer was a remote record there, so the route
/// was not given back).
#[tokio::test]
async fn a_replacement_that_gives_up_on_another_node_leaves_a_pair_on_one_node_alone() {
    let redis = RedisServer::start();
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut app = node_a.connect(Role::App, &id).await;
    let mut web = node_a.connect(Role::Web, &id).await;
    abandoned_upgrade(node_b.addr, &format!("/channel?type=app&channelId={id}")).await;
    wait_until("the abandoned upgrade to fail", || {
        read(&node_b.metrics.upgrades_failed) == 1
    })
    .await;
    app.send_text("still paired").await;
    assert_eq!(web.recv_text().await, "still paired");
    web.send_text("and back").await;
    assert_eq!(app.recv_text().await, "and back");
    assert_eq!(read(&node_a.metrics.sessions_replaced), 0);
    assert_eq!(read(&node_b.metrics.sessions_replaced), 0);
    // A new app on node B replaces it for real, and pairs.
    let mut new_app = node_b.connect(Role::App, &id).await;
    assert_eq!(app.close_code().await, 4001);
    web.send_text("to the new app").await;
    assert_eq!(new_app.recv_text().await, "to the new app");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// A link that is down holds at most `inner.queue-bytes` of data frames: the senders of every
/// pair across it wait (before, only `inner.queue` frames bounded it, 65 536 by default, and
/// credit let each pair put dozens of messages in it), and once the link is back every
/// message arrives, in order.
#[tokio::test]
async fn a_link_that_is_down_queues_at_most_inner_queue_bytes_and_loses_nothing() {
    const QUEUE_BYTES: usize = 64 * 1024;
    const PAIRS: usize = 10;
    const MESSAGES: usize = 50;
    let redis = RedisServer::start();
    let b_inner_port = crate::harness::redis::free_port();
    let proxy = Proxy::start(format!("127.0.0.1:{b_inner_port}").parse().unwrap()).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |c| {
        c.inner.port = b_inner_port;
        c.inner.advertise = proxy.addr.to_string();
    })
    .await;
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |c| {
        c.inner.queue_bytes = QUEUE_BYTES;
        c.inner.connect_timeout = Duration::from_secs(30);
    })
    .await;
    let b = node_b.router.me().id;
    let mut apps = Vec::new();
    let mut webs = Vec::new();
    for _ in 0..PAIRS {
        let id = random_channel_id();
        let mut app = node_a.connect(Role::App, &id).await;
        let mut web = node_b.connect(Role::Web, &id).await;
        app.send_text("hello").await;
        assert_eq!(web.recv_text().await, "hello");
        apps.push(app);
        webs.push(web);
    }
    proxy.cut();
    wait_until("node A to fail to redial node B", || {
        read(&node_a.metrics.link_dial_failures) > 0
    })
    .await;
    let payload = |pair: usize, n: usize| format!("{pair}:{n}:{}", "x".repeat(10_000));
    let floods: Vec<_> = apps
        .into_iter()
        .enumerate()
        .map(|(pair, mut app)| {
            tokio::spawn(async move {
                for n in 0..MESSAGES {
                    app.send_text(&payload(pair, n)).await;
                }
                app
            })
        })
        .collect();
    wait_until("the link's queue to fill", || {
        node_a.router.link_queued_bytes(b).unwrap_or(0) > QUEUE_BYTES - 10_240
    })
    .await;
    for _ in 0..10 {
        let queued = node_a.router.link_queued_bytes(b).unwrap_or(0);
        assert!(queued <= QUEUE_BYTES, "{queued} bytes queued on the link");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.restore();
    for (pair, web) in webs.iter_mut().enumerate() {
        for n in 0..MESSAGES {
            assert_eq!(web.recv_text().await, payload(pair, n));
        }
    }
    for flood in floods {
        flood.await.expect("flood task");
    }
    assert_eq!(read(&node_a.metrics.link_frames_dropped), 0);
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// This node's member of `wspair:nodes` (`id|advertise|window|version`), as Redis holds it.
fn node_member(redis: &RedisServer, node: &TestNode) -> String {
    let prefix = format!("{}|", node.router.me().id);
    redis
        .cli(&["ZRANGE", "wspair:nodes", "0", "-1"])
        .unwrap_or_default()
        .lines()
        .find(|member| member.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no member of wspair:nodes for {prefix}"))
        .to_owned()
}

/// Regression (case 6): every claim that met a route of a node this one had not heard of
/// polled the directory, and a node missing from two polls was dead; so a burst of such claims
/// declared a node dead within milliseconds of its entry going missing. A node is now dead
/// when not seen for `registry.node-ttl`, and such polls can only add nodes.
#[tokio::test]
async fn a_burst_of_claims_meeting_unknown_nodes_never_declares_a_live_node_dead() {
    const CLAIMS: usize = 200;
    let redis = RedisServer::start();
    // Node B reaches Redis through a proxy, so it can miss heartbeats while node A does not.
    let proxy = Proxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    // A long node-ttl: node B's entry goes missing for far less than it.
    let ttl = |c: &mut wspair::Config| c.registry.node_ttl = Duration::from_secs(10);
    let node_a = TestNode::start_in_cluster(vec![redis.url()], ttl).await;
    let node_b = TestNode::start_in_cluster(vec![format!("redis://{}", proxy.addr)], ttl).await;
    let id = random_channel_id();
    let mut app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    app.send_text("before").await;
    assert_eq!(web.recv_text().await, "before");

    // Routes naming a node nobody has heard of: each claim below meets one.
    let channels: Vec<_> = (0..CLAIMS).map(|_| random_channel_id()).collect();
    let mut mset = vec!["MSET".to_owned()];
    for channel in &channels {
        mset.push(format!("wspair:{{{channel}}}:app"));
        mset.push("00000000000000ab:1".to_owned());
    }
    let mset: Vec<&str> = mset.iter().map(String::as_str).collect();
    redis.cli(&mset).expect("redis-cli MSET");

    // Node B's entry goes missing, and B cannot heartbeat for now.
    proxy.cut();
    let b_member = node_member(&redis, &node_b);
    redis
        .cli(&["ZREM", "wspair:nodes", &b_member])
        .expect("redis-cli ZREM");
    let webs = futures::future::join_all(
        channels
            .iter()
            .map(|channel| node_a.connect(Role::Web, channel)),
    )
    .await;
    assert_eq!(webs.len(), CLAIMS);

    // Node A still has node B for live: the pair relays, nothing was dropped for want of a peer.
    app.send_text("after the burst").await;
    let received = tokio::time::timeout(Duration::from_secs(3), web.recv_text()).await;
    assert_eq!(
        read(&node_a.metrics.messages_dropped_no_peer),
        0,
        "node A declared node B dead and dropped the message"
    );
    assert_eq!(received.expect("the message arrives"), "after the burst");
    proxy.restore();
    drop(webs);
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// Case 5: re-registration wrote back every route that was absent or still this node's, and
/// announced every session, but a session whose route another session had taken (the
/// replacement's `Evict` never arrived) kept running. It is now closed with 4001 when its node
/// registers again, and its route is left to the other session.
#[tokio::test]
async fn a_session_whose_route_was_taken_is_closed_with_4001_when_its_node_registers_again() {
    let Cluster {
        redis,
        node_a,
        node_b,
        id,
        mut app,
        web: _web,
    } = Cluster::with_a_pair().await;
    // Another pair on the same nodes, whose routes stay theirs.
    let other = random_channel_id();
    let mut other_app = node_a.connect(Role::App, &other).await;
    let mut other_web = node_b.connect(Role::Web, &other).await;

    // A session on node B took the app's route; node A never heard of it.
    let app_key = format!("wspair:{{{id}}}:app");
    let taker = format!("{}:999999", node_b.router.me().id);
    redis
        .cli(&["SET", &app_key, &taker])
        .expect("redis-cli SET");
    // Node A's registration is lost: its next heartbeat has it register every session again.
    let a_member = node_member(&redis, &node_a);
    redis
        .cli(&["ZREM", "wspair:nodes", &a_member])
        .expect("redis-cli ZREM");

    assert_eq!(
        app.ending().await,
        Ending::Close(4001, "replaced by a newer connection".into())
    );
    assert_eq!(
        redis.cli(&["GET", &app_key]).unwrap().trim(),
        taker,
        "the route is left to the session that took it"
    );
    assert_eq!(read(&node_a.metrics.sessions_fenced), 1);
    // The other pair was registered again and relays.
    other_app.send_text("still paired").await;
    assert_eq!(other_web.recv_text().await, "still paired");
    other_web.send_text("and back").await;
    assert_eq!(other_app.recv_text().await, "and back");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn redis_with_an_acl_user_and_a_password_works_and_a_wrong_password_is_told() {
    use crate::harness::redis::RedisServer;
    let redis = RedisServer::start();
    redis.lock_down();
    let url = format!("redis://wspair:relay-s3cret@127.0.0.1:{}", redis.port);
    let node_a = TestNode::start_in_cluster(vec![url.clone()], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![url], |_| {}).await;
    let id = random_channel_id();
    let mut app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    app.send_text("through an authenticated registry").await;
    assert_eq!(web.recv_text().await, "through an authenticated registry");

    // A wrong password: the node starts, and upgrades get 503 saying why.
    let wrong = format!("redis://wspair:wrong@127.0.0.1:{}", redis.port);
    let node_c = TestNode::start_in_cluster(vec![wrong], |_| {}).await;
    let target = format!("/channel?type=app&channelId={}", random_channel_id());
    let refused = request(node_c.addr, "GET", &target, UPGRADE_HEADERS).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused.body.contains("Password authentication failed"),
        "{}",
        refused.body
    );
    node_c.shutdown().await;
    node_a.shutdown().await;
    node_b.shutdown().await;
}
