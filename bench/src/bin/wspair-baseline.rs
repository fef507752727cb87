//! The baseline: a minimal pair relay, tokio + hyper + the same WebSocket library as wspair
//! (yawc, same buffer sizes), a HashMap, nothing else. No validation beyond what pairing needs,
//! no limits, no timeouts, no metrics. Every wspair figure is also a ratio to this one, measured
//! in the same run.
//!
//! Usage: `wspair-baseline [ADDR]` (default 127.0.0.1:1124).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use yawc::{Frame, OpCode, Options, WebSocket};

type Slots = Arc<Mutex<HashMap<(String, String), mpsc::Sender<Frame>>>>;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1124".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!("baseline listening on {addr}");
    let slots: Slots = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slots = Arc::clone(&slots);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let slots = Arc::clone(&slots);
                async move { Ok::<_, Infallible>(upgrade(request, slots)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn upgrade(mut request: Request<hyper::body::Incoming>, slots: Slots) -> Response<Empty<Bytes>> {
    let query = request.uri().query().unwrap_or("").to_owned();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
            .to_owned()
    };
    let (role, id) = (param("type"), param("channelId"));
    let options = Options::default()
        .with_limits(10_241, 10_241)
        .with_read_buffer_capacity(1024)
        .with_write_buffer_capacity(1024);
    let Ok((response, upgrading)) = WebSocket::upgrade_with_options(&mut request, options) else {
        return Response::builder().status(400).body(Empty::new()).unwrap();
    };
    tokio::spawn(async move {
        let Ok(ws) = upgrading.await else { return };
        let (tx, mut rx) = mpsc::channel::<Frame>(1024);
        let peer_role = if role == "app" { "web" } else { "app" };
        slots.lock().unwrap().insert((id.clone(), role.clone()), tx);
        let (mut sink, mut stream) = ws.split();
        let writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if sink.feed(frame).await.is_err() {
                    return;
                }
                while let Ok(frame) = rx.try_recv() {
                    if sink.feed(frame).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        let mut peer: Option<mpsc::Sender<Frame>> = None;
        while let Some(frame) = stream.next().await {
            if !matches!(frame.opcode(), OpCode::Text | OpCode::Binary) {
                continue;
            }
            if peer.as_ref().is_none_or(|tx| tx.is_closed()) {
                peer = slots
                    .lock()
                    .unwrap()
                    .get(&(id.clone(), peer_role.to_owned()))
                    .cloned();
            }
            if let Some(tx) = &peer {
                let _ = tx.send(frame).await;
            }
        }
        slots.lock().unwrap().remove(&(id, role));
        writer.abort();
    });
    response
}
