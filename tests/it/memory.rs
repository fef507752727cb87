//! Memory bounds against hostile or broken clients, measured on a node running as a separate
//! process (its RSS from `/proc`), so nothing else in the test shares its address space.

use std::time::Duration;

use futures::SinkExt;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wspair::Role;

use crate::harness::process::ProcessNode;
use crate::harness::{Client, random_channel_id};

/// Regression: session queues were bounded in messages only. Senders flooding receivers that
/// do not read pinned 1 024 messages of 10 kB per receiver (14 MiB each, measured), and
/// permessage-deflate made that cost a few dozen bytes per message on the wire. The queue is
/// now bounded in bytes too (`outer.send-queue-bytes`, 1 MiB).
#[tokio::test]
async fn floods_into_receivers_that_do_not_read_hold_a_bounded_amount_of_memory() {
    const PAIRS: usize = 10;
    const MESSAGES: usize = 3_000;
    let node = ProcessNode::start(&[]);
    let before = node.rss_kib();
    let zeros = Bytes::from(vec![0u8; 10_000]);
    let mut receivers = Vec::new();
    let mut floods = Vec::new();
    for n in 0..2 * PAIRS {
        let id = random_channel_id();
        // Receivers negotiate no compression and never read.
        receivers.push(Client::connect(&node.url(Role::Web, &id)).await);
        let url = node.url(Role::App, &id);
        let zeros = zeros.clone();
        let compressed = n % 2 == 0;
        floods.push(tokio::spawn(async move {
            let connection: Box<dyn std::any::Any + Send> = if compressed {
                let mut app = yawc::WebSocket::connect(url.parse().unwrap())
                    .with_options(yawc::Options::default().with_balanced_compression())
                    .await
                    .expect("compressing client connects");
                for _ in 0..MESSAGES {
                    app.send(yawc::Frame::binary(zeros.clone())).await.unwrap();
                }
                Box::new(app)
            } else {
                let mut app = Client::connect(&url).await;
                // Uncompressed, the sender's own socket fills first; what it got out is enough.
                for _ in 0..MESSAGES {
                    let send = app.ws.send(Message::binary(zeros.clone()));
                    if tokio::time::timeout(Duration::from_millis(500), send)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Box::new(app)
            };
            connection
        }));
    }
    let mut senders = Vec::new();
    for flood in floods {
        senders.push(flood.await.expect("flood task"));
    }
    let after = node
        .settled_rss_kib(Duration::from_secs(1), Duration::from_secs(10))
        .await;
    let grown_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    let per_receiver = grown_mib / (2 * PAIRS) as f64;
    eprintln!("node RSS grew {grown_mib:.1} MiB, {per_receiver:.2} MiB per stalled receiver");
    assert!(
        per_receiver < 2.0,
        "node grew {per_receiver:.2} MiB per stalled receiver (queue bound 1 MiB)"
    );
    drop(senders);
    drop(receivers);
}
