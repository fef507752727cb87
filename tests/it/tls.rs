//! TLS on the client listener (`outer.tls-cert`, `outer.tls-key`): wss:// clients that trust a
//! test CA (`harness::ca`: root, intermediate, leaf: the certificate file holds a chain), plaintext
//! refused at the TLS layer without harm to the node, SIGHUP reloading the certificate under
//! open sessions (and keeping the old one when the new file is broken), and bad files at start
//! named by key.

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rcgen::KeyPair;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use wspair::Config;

use crate::harness::ca::{TestCa, scratch_dir};
use crate::harness::process::ProcessNode;
use crate::harness::{EVENT_TIMEOUT, TestNode, random_channel_id, wait_until};

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// Whether a TLS handshake with the node succeeds, trusting `connector`'s roots.
async fn handshake(connector: &TlsConnector, addr: std::net::SocketAddr) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(EVENT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Connects over TLS trusting `connector`'s roots, and upgrades.
async fn connect_wss(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    query: &str,
) -> Result<Wss, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(EVENT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let url = format!("wss://{addr}/channel?{query}");
    let (ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// An app and a web of a fresh channel, over TLS.
async fn wss_pair(connector: &TlsConnector, addr: std::net::SocketAddr) -> (Wss, Wss) {
    let id = random_channel_id();
    let app = connect_wss(connector, addr, &format!("type=app&channelId={id}"))
        .await
        .unwrap();
    let web = connect_wss(connector, addr, &format!("type=web&channelId={id}"))
        .await
        .unwrap();
    (app, web)
}

/// Sends `text` from `from` and waits for it at `to`.
async fn relays(from: &mut Wss, to: &mut Wss, text: &str) {
    from.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(EVENT_TIMEOUT, to.next())
        .await
        .expect("relayed in time");
    assert_eq!(got.unwrap().unwrap(), Message::text(text));
}

#[tokio::test]
async fn wss_clients_pair_and_plaintext_is_refused_without_harm() {
    let ca = TestCa::new();
    let files = ca.issue(&scratch_dir("pair"));
    let node = TestNode::start(|config| config.outer.tls = Some(files)).await;
    let (mut app, mut web) = wss_pair(&ca.client(), node.addr).await;
    relays(&mut app, &mut web, "over tls").await;
    relays(&mut web, &mut app, "and back").await;

    // A plaintext client on the TLS port: its request is no TLS handshake.
    let url = node.url(wspair::Role::App, &random_channel_id().to_string());
    let refused = crate::harness::Client::try_connect_with_socket_buffers(&url, None, None).await;
    assert!(refused.is_err(), "a plaintext upgrade must fail");
    wait_until("the failed handshake is counted", || {
        crate::harness::read(&node.metrics.tls_handshakes_failed) == 1
    })
    .await;
    // A client that does not trust the certificate fails its own handshake.
    let stranger = TestCa::new().client();
    let err = handshake(&stranger, node.addr).await.unwrap_err();
    assert!(err.contains("invalid peer certificate"), "{err}");
    relays(&mut app, &mut web, "still serving").await;
    node.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_under_open_sessions_and_keeps_it_when_the_new_one_is_bad() {
    let dir = scratch_dir("reload");
    let (first, second) = (TestCa::new(), TestCa::new());
    let files = first.issue(&dir);
    let mut node = ProcessNode::start(&[
        "--outer-tls-cert",
        files.cert.to_str().unwrap(),
        "--outer-tls-key",
        files.key.to_str().unwrap(),
    ]);
    let (mut app, mut web) = wss_pair(&first.client(), node.addr).await;
    relays(&mut app, &mut web, "before").await;

    second.issue(&dir);
    node.hangup();
    let reloaded = async {
        loop {
            if handshake(&second.client(), node.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(EVENT_TIMEOUT, reloaded)
        .await
        .expect("the new certificate is served");
    assert!(
        handshake(&first.client(), node.addr).await.is_err(),
        "the old certificate is no longer served"
    );
    relays(&mut app, &mut web, "an open session is untouched").await;

    std::fs::write(&files.cert, "not a certificate").unwrap();
    node.hangup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut app2, mut web2) = wss_pair(&second.client(), node.addr).await;
    relays(&mut app2, &mut web2, "a bad file changed nothing").await;
    relays(&mut web, &mut app, "after").await;
    node.kill9();
}

#[test]
fn bad_tls_settings_at_start_name_the_key() {
    let dir = scratch_dir("bad");
    let files = TestCa::new().issue(&dir);
    let load = |cert: &Path, key: &Path| {
        Config::load(
            None,
            &[
                ("outer.tls-cert", cert.display().to_string()),
                ("outer.tls-key", key.display().to_string()),
            ],
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    assert_eq!(load(&files.cert, &files.key), Ok(()));
    let missing = dir.join("missing.pem");
    assert!(
        load(&missing, &files.key)
            .unwrap_err()
            .starts_with("outer.tls-cert: ")
    );
    assert!(
        load(&files.cert, &missing)
            .unwrap_err()
            .starts_with("outer.tls-key: ")
    );
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let mismatch = load(&files.cert, &other_key).unwrap_err();
    assert!(
        mismatch.starts_with("outer.tls-key: does not fit"),
        "{mismatch}"
    );
    let only_cert = Config::load(
        None,
        &[("outer.tls-cert", files.cert.display().to_string())],
    );
    assert_eq!(
        only_cert.unwrap_err().to_string(),
        "outer.tls-key: must be set with outer.tls-cert"
    );
}
