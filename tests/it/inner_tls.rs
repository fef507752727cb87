//! TLS on the inner links (`inner.tls-cert`, `inner.tls-key`, `inner.tls-ca`): two nodes sharing
//! one certificate that names neither of their addresses relay both ways (the chain to the
//! cluster's CA is checked, names are not); a node with a certificate from another CA, and a
//! plaintext node, cannot link either way, so a pair across them is refused as for any node
//! that cannot be reached (503 after `inner.connect-timeout`, the route given back) while the
//! others serve on; SIGHUP reloads the files of a running node; bad settings are named by key.

use std::path::Path;

use wspair::Role;
use wspair::node::NodeInfo;
use wspair::tls::inner::InnerTlsFiles;

use crate::harness::ca::{TestCa, scratch_dir};
use crate::harness::http::{UPGRADE_HEADERS, request};
use crate::harness::process::ProcessNode;
use crate::harness::redis::RedisServer;
use crate::harness::{
    Client, EVENT_TIMEOUT, TestNode, random_channel_id, read, relays_across, wait_until,
};

/// One certificate of `ca` for every node, naming none of their addresses, with the CA's root.
fn cluster_files(ca: &TestCa, dir: &Path, prefix: &str) -> InnerTlsFiles {
    let leaf = ca.issue_for(dir, prefix, &["nodes.wspair.test"]);
    InnerTlsFiles {
        cert: leaf.cert,
        key: leaf.key,
        ca: ca.write_root(dir, prefix),
    }
}

/// A node on `redis` with inner TLS from `files`, or plaintext links.
async fn node(redis: &RedisServer, files: Option<InnerTlsFiles>) -> TestNode {
    TestNode::start_in_cluster(vec![redis.url()], |config| config.inner.tls = files).await
}

/// A web on `holder` waits; an app for it on `claimer` is refused with 503 because the two
/// nodes cannot link: `claimer` cannot reach `holder` with the `Bound`.
async fn cannot_pair(claimer: &TestNode, holder: &TestNode) {
    let id = random_channel_id();
    let _web = holder.connect(Role::Web, &id).await;
    let target = format!("/channel?type=app&channelId={id}");
    let refused = request(claimer.addr, "GET", &target, UPGRADE_HEADERS).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused
            .body
            .starts_with("the node holding the peer did not answer within"),
        "{}",
        refused.body
    );
}

#[tokio::test]
async fn two_nodes_with_inner_tls_relay_both_ways() {
    let dir = scratch_dir("inner-pair");
    let ca = TestCa::new();
    let files = cluster_files(&ca, &dir, "");
    let redis = RedisServer::start();
    let node_a = node(&redis, Some(files.clone())).await;
    let node_b = node(&redis, Some(files)).await;
    relays_across(&node_a, &node_b, "over inner TLS").await;
    relays_across(&node_b, &node_a, "the other way round").await;
    let many = async {
        let id = random_channel_id();
        let app = node_a.connect(Role::App, &id).await;
        let web = node_b.connect(Role::Web, &id).await;
        crate::harness::client::exchange(app, web, 1000).await
    };
    tokio::time::timeout(EVENT_TIMEOUT, many)
        .await
        .expect("a thousand messages each way in time");
    assert_eq!(read(&node_a.metrics.links_refused), 0);
    assert_eq!(read(&node_b.metrics.links_refused), 0);

    // The inner port speaks only TLS: the HMAC handshake in plaintext gets nowhere.
    use wspair::inner::{auth, codec::InnerCodec};
    let stream = tokio::net::TcpStream::connect(node_a.inner_addr.unwrap())
        .await
        .unwrap();
    let mut framed = tokio_util::codec::Framed::new(stream, InnerCodec::new(10_240));
    let impostor = NodeInfo {
        id: wspair::node::NodeId::from_u64(7).unwrap(),
        advertise: "127.0.0.1:1".into(),
        window: 16,
        version: "0".into(),
    };
    let secret = crate::harness::SECRET.as_bytes();
    let result = tokio::time::timeout(
        EVENT_TIMEOUT,
        auth::dial(&mut framed, &impostor, secret, &[]),
    )
    .await
    .expect("the node cuts it");
    assert!(result.is_err(), "{result:?}");
    let metrics = node_a.metrics.clone();
    wait_until("the plaintext dial to be refused", || {
        read(&metrics.links_refused) == 1
    })
    .await;
    // Trusting the CA is not enough: a dialer must show a certificate of it too.
    let tcp = tokio::net::TcpStream::connect(node_a.inner_addr.unwrap())
        .await
        .unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("nodes.wspair.test").unwrap();
    if let Ok(mut tls) = ca.client().connect(name, tcp).await {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(EVENT_TIMEOUT, tls.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "the listener cuts a dialer without a certificate: {read:?}"
        );
    }
    wait_until("the dial without a certificate to be refused", || {
        read(&metrics.links_refused) == 2
    })
    .await;
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn a_node_with_a_certificate_from_another_ca_cannot_link_either_way_and_the_others_serve_on()
{
    let dir = scratch_dir("inner-other-ca");
    let files = cluster_files(&TestCa::new(), &dir, "");
    let stranger = cluster_files(&TestCa::new(), &dir, "stranger-");
    let redis = RedisServer::start();
    let node_a = node(&redis, Some(files.clone())).await;
    let node_b = node(&redis, Some(files)).await;
    let node_c = node(&redis, Some(stranger)).await;
    // C dials A: A refuses C's certificate. A dials C: A refuses C's certificate.
    tokio::join!(cannot_pair(&node_c, &node_a), cannot_pair(&node_a, &node_c));
    assert!(read(&node_a.metrics.links_refused) >= 1);
    assert!(read(&node_a.metrics.link_dial_failures) >= 1);
    relays_across(&node_a, &node_b, "the cluster serves on").await;
    relays_across(&node_c, &node_c, "and so does the stranger, alone").await;
    node_a.shutdown().await;
    node_b.shutdown().await;
    node_c.shutdown().await;
}

#[tokio::test]
async fn a_plaintext_node_cannot_link_to_a_tls_node_either_way() {
    let dir = scratch_dir("inner-plain");
    let redis = RedisServer::start();
    let node_a = node(&redis, Some(cluster_files(&TestCa::new(), &dir, ""))).await;
    let plain = node(&redis, None).await;
    tokio::join!(cannot_pair(&plain, &node_a), cannot_pair(&node_a, &plain));
    // Each listener cut the other's dial: A a plaintext Hello, the plaintext node a TLS hello.
    assert!(read(&node_a.metrics.links_refused) >= 1);
    assert!(read(&plain.metrics.links_refused) >= 1);
    relays_across(&node_a, &node_a, "node A serves on").await;
    relays_across(&plain, &plain, "and so does the plaintext one").await;
    node_a.shutdown().await;
    plain.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_inner_tls_files_of_a_running_node() {
    let dir = scratch_dir("inner-reload");
    let (cluster, other) = (TestCa::new(), TestCa::new());
    let files = cluster_files(&cluster, &dir, "");
    let redis = RedisServer::start();
    let node_a = node(&redis, Some(files)).await;
    // The process starts with another CA's files: it cannot link to A.
    let mine = cluster_files(&other, &dir, "p-");
    let mut args = crate::harness::process_cluster_args(&redis.url());
    for (flag, path) in [
        ("--inner-tls-cert", &mine.cert),
        ("--inner-tls-key", &mine.key),
        ("--inner-tls-ca", &mine.ca),
    ] {
        args.extend([flag.to_owned(), path.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = ProcessNode::start(&args);
    let id = random_channel_id();
    let _web = Client::connect(&process.url(Role::Web, &id)).await;
    let target = format!("/channel?type=app&channelId={id}");
    let refused = request(node_a.addr, "GET", &target, UPGRADE_HEADERS).await;
    assert_eq!(refused.status, 503, "{refused:?}");

    // The cluster's files replace them, and SIGHUP reads them: the two nodes link.
    let renewed = cluster_files(&cluster, &dir, "renewed-");
    for (from, to) in [
        (&renewed.cert, &mine.cert),
        (&renewed.key, &mine.key),
        (&renewed.ca, &mine.ca),
    ] {
        std::fs::copy(from, to).unwrap();
    }
    process.hangup();
    let paired = async {
        loop {
            let id = random_channel_id();
            let mut web = Client::connect(&process.url(Role::Web, &id)).await;
            let url = node_a.url(Role::App, id.as_str());
            if let Ok(mut app) = Client::try_connect_with_socket_buffers(&url, None, None).await {
                app.send_text("linked after the reload").await;
                assert_eq!(web.recv_text().await, "linked after the reload");
                web.send_text("and back").await;
                assert_eq!(app.recv_text().await, "and back");
                return;
            }
        }
    };
    tokio::time::timeout(EVENT_TIMEOUT * 2, paired)
        .await
        .expect("the nodes link once the new files are read");

    // A broken file keeps the files in use.
    std::fs::write(&mine.cert, "not a certificate").unwrap();
    process.hangup();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let id = random_channel_id();
    let mut web = Client::connect(&process.url(Role::Web, &id)).await;
    let mut app = node_a.connect(Role::App, &id).await;
    app.send_text("a bad file changed nothing").await;
    assert_eq!(web.recv_text().await, "a bad file changed nothing");
    node_a.shutdown().await;
}

#[test]
fn bad_inner_tls_settings_name_the_key() {
    let dir = scratch_dir("inner-bad");
    let ca = TestCa::new();
    let files = cluster_files(&ca, &dir, "");
    let path = |path: &Path| path.display().to_string();
    let load = |settings: &[(&str, String)]| {
        wspair::Config::load(None, settings)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let all = [
        ("inner.tls-cert", path(&files.cert)),
        ("inner.tls-key", path(&files.key)),
        ("inner.tls-ca", path(&files.ca)),
    ];
    assert_eq!(load(&all), Ok(()));
    for missing in 0..3 {
        let some: Vec<_> = (0..3)
            .filter(|i| *i != missing)
            .map(|i| all[i].clone())
            .collect();
        let err = load(&some).unwrap_err();
        assert!(
            err.starts_with(&format!("{}: must be set with", all[missing].0)),
            "{err}"
        );
    }
    let err = load(&[all[0].clone()]).unwrap_err();
    assert!(
        err.starts_with("inner.tls-key: must be set with inner.tls-cert"),
        "{err}"
    );
    let broken = dir.join("broken.pem");
    std::fs::write(&broken, "not PEM").unwrap();
    for (i, key) in ["inner.tls-cert", "inner.tls-key", "inner.tls-ca"]
        .iter()
        .enumerate()
    {
        let mut settings = all.clone();
        settings[i].1 = path(&broken);
        let err = load(&settings).unwrap_err();
        assert!(err.starts_with(&format!("{key}: ")), "{err}");
    }
    let mut mismatched = all.clone();
    mismatched[1].1 = path(&ca.issue_as(&dir, "other-").key);
    let err = load(&mismatched).unwrap_err();
    assert!(err.starts_with("inner.tls-key: does not fit"), "{err}");
}

/// A TLS relay for `relay_addr`, holding `leaf` (a certificate of the cluster's CA) but not
/// `inner.secret`: it accepts the dialer's TLS, dials the node behind it with its own, and copies
/// bytes both ways, keeping what the dialer sent in plaintext.
async fn certificate_relay(
    relay: tokio::net::TcpListener,
    leaf: &wspair::tls::TlsFiles,
    ca: &Path,
    behind: std::net::SocketAddr,
) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&leaf.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = || PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let provider = || Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let acceptor = TlsAcceptor::from(Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key())
            .unwrap(),
    ));
    let mut roots = RootCertStore::empty();
    for root in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(root.unwrap()).unwrap();
    }
    let connector = TlsConnector::from(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key())
            .unwrap(),
    ));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let captured = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = relay.accept().await {
            let (acceptor, connector, captured) =
                (acceptor.clone(), connector.clone(), Arc::clone(&captured));
            tokio::spawn(async move {
                let Ok(from_dialer) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(to_node) = tokio::net::TcpStream::connect(behind).await else {
                    return;
                };
                let name = ServerName::try_from("nodes.wspair.test").unwrap();
                let Ok(to_node) = connector.connect(name, to_node).await else {
                    return;
                };
                let (mut dialer_read, mut dialer_write) = tokio::io::split(from_dialer);
                let (mut node_read, mut node_write) = tokio::io::split(to_node);
                let upstream = async {
                    let mut buf = vec![0; 16 * 1024];
                    while let Ok(n @ 1..) = dialer_read.read(&mut buf).await {
                        captured.lock().unwrap().extend_from_slice(&buf[..n]);
                        if node_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let downstream = tokio::io::copy(&mut node_read, &mut dialer_write);
                tokio::select! { _ = upstream => {}, _ = downstream => {} }
            });
        }
    });
    seen
}

#[tokio::test]
async fn a_certificate_without_the_secret_cannot_relay_a_link() {
    let dir = scratch_dir("inner-relay");
    let ca = TestCa::new();
    let files = cluster_files(&ca, &dir, "node-");
    // Another leaf of the same CA (a decommissioned node's), held by someone without the secret.
    let theirs = ca.issue_for(&dir, "relay-", &["relay.example"]);
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let redis = RedisServer::start();
    let a = node(&redis, Some(files.clone())).await;
    // B is said (in Redis) to be where the relay listens.
    let b = TestNode::start_in_cluster(vec![redis.url()], |config| {
        config.inner.tls = Some(files.clone());
        config.inner.advertise = relay_addr.to_string();
    })
    .await;
    let seen = certificate_relay(relay, &theirs, &files.ca, b.inner_addr.unwrap()).await;
    let id = random_channel_id();
    let _web = b.connect(Role::Web, &id).await;
    // A's link to B goes through the relay: its handshake is bound to A's TLS session with
    // the relay, which B's is not, so B refuses it and A never links.
    let target = format!("/channel?type=app&channelId={id}");
    let refused = request(a.addr, "GET", &target, UPGRADE_HEADERS).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    wait_until("B refused the relayed handshake", || {
        read(&b.metrics.links_refused) >= 1
    })
    .await;
    let plaintext = seen.lock().unwrap().clone();
    assert!(
        !plaintext
            .windows(id.as_str().len())
            .any(|w| w == id.as_str().as_bytes()),
        "the relay read a frame naming the channel"
    );
    a.shutdown().await;
    b.shutdown().await;
}
