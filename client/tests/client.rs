//! The async client end to end against the in-process relay of `support/`: exchange, acks,
//! reconnects, drain, refusals, flow control, close, raw fallback.

mod support;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use support::Relay;
use wspair_client::{Client, Config, Error, Event, Presence, Role};

/// Every test ends within this, whatever happens.
const LIMIT: Duration = Duration::from_secs(20);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("the test finished in time")
}

fn config(relay: &Relay, role: Role) -> Config {
    let mut c = Config::new(relay.urls.clone(), "chan-1", role);
    c.backoff_min = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(100);
    c
}

/// Reads events until one matches; returns it with the ones before it.
async fn until(c: &mut Client, want: impl Fn(&Event) -> bool) -> (Event, Vec<Event>) {
    let mut skipped = Vec::new();
    loop {
        let e = c.next_event().await.expect("the client runs");
        if want(&e) {
            return (e, skipped);
        }
        skipped.push(e);
    }
}

/// Reads `n` messages as strings, with their seqs.
async fn messages(c: &mut Client, n: usize) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Event::Message { payload, seq, .. } = c.next_event().await.expect("the client runs")
        {
            out.push((String::from_utf8(payload.to_vec()).unwrap(), seq));
        }
    }
    out
}

fn numbered(range: std::ops::Range<u64>) -> Vec<(String, u64)> {
    range.map(|i| (format!("m{i}"), i)).collect()
}

async fn pair(relay: &Relay) -> (Client, Client) {
    let mut a = Client::connect(config(relay, Role::App)).await.unwrap();
    let mut b = Client::connect(config(relay, Role::Web)).await.unwrap();
    until(&mut a, |e| *e == Event::Presence(Presence::Online)).await;
    until(&mut b, |e| *e == Event::Presence(Presence::Online)).await;
    (a, b)
}

#[tokio::test]
async fn two_clients_exchange_messages_and_acks() {
    within(async {
        let relay = Relay::start(1).await;
        let (mut a, mut b) = pair(&relay).await;
        for i in 1..=50u64 {
            assert_eq!(a.send_text(format!("m{i}")).await.unwrap(), i);
        }
        assert_eq!(b.send_binary(vec![1u8, 2, 3]).await.unwrap(), 1);
        assert_eq!(messages(&mut b, 50).await, numbered(1..51));
        let (e, _) = until(&mut a, |e| matches!(e, Event::Message { .. })).await;
        assert_eq!(
            e,
            Event::Message {
                text: false,
                payload: vec![1u8, 2, 3].into(),
                seq: 1
            }
        );
        until(&mut a, |e| *e == Event::Acked { hw: 50 }).await;
        let s = a.stats();
        assert_eq!((s.outbox_len, s.next_seq, s.acked, s.rx_hw), (0, 51, 50, 1));
        assert_eq!((s.r#gen, s.reconnects), (1, 0));
        assert_eq!(b.stats().rx_hw, 50);
    })
    .await;
}

#[tokio::test]
async fn a_reconnect_loses_and_repeats_nothing() {
    within(async {
        let relay = Relay::start(2).await;
        let (a, mut b) = pair(&relay).await;
        for i in 1..=20u64 {
            a.send_text(format!("m{i}")).await.unwrap();
        }
        a.reconnect().await;
        for i in 21..=40u64 {
            a.send_text(format!("m{i}")).await.unwrap();
        }
        assert_eq!(messages(&mut b, 40).await, numbered(1..41));
        let s = a.stats();
        assert_eq!((s.r#gen, s.reconnects), (2, 1));
        let nodes: Vec<_> = relay
            .connects()
            .into_iter()
            .filter(|(role, _, _)| role == "app")
            .map(|(_, g, node)| (g, node))
            .collect();
        assert_eq!(
            nodes,
            vec![(1, "node0".to_string()), (2, "node1".to_string())],
            "the reconnect went to the next URL with the next gen"
        );
    })
    .await;
}

#[tokio::test]
async fn goaway_moves_the_client_without_a_presence_change() {
    within(async {
        let relay = Relay::start(2).await;
        let mut cfg_a = config(&relay, Role::App);
        let mut cfg_b = config(&relay, Role::Web);
        cfg_a.presence_quiet = Duration::from_millis(200);
        cfg_b.presence_quiet = Duration::from_millis(200);
        let mut a = Client::connect(cfg_a).await.unwrap();
        let mut b = Client::connect(cfg_b).await.unwrap();
        until(&mut a, |e| *e == Event::Presence(Presence::Online)).await;
        until(&mut b, |e| *e == Event::Presence(Presence::Online)).await;
        a.send_text("before").await.unwrap();
        relay.goaway("app");
        let (e, _) = until(&mut a, |e| matches!(e, Event::Connected { .. })).await;
        assert_eq!(
            e,
            Event::Connected {
                r#gen: 2,
                node: "node1".into()
            }
        );
        a.send_text("after").await.unwrap();
        let got = messages(&mut b, 2).await;
        assert_eq!(got, vec![("before".into(), 1), ("after".into(), 2)]);
        // Wait past quiet: the peer's move is not reported as a presence change.
        tokio::time::sleep(Duration::from_millis(400)).await;
        b.send_text("ping").await.unwrap();
        let (_, skipped) = until(&mut a, |e| matches!(e, Event::Message { .. })).await;
        assert!(
            !skipped
                .iter()
                .any(|e| matches!(e, Event::Disconnected { .. })),
            "{skipped:?}"
        );
        let b_events = {
            a.send_text("pong").await.unwrap();
            until(&mut b, |e| matches!(e, Event::Message { .. }))
                .await
                .1
        };
        assert!(
            !b_events.iter().any(|e| matches!(e, Event::Presence(_))),
            "{b_events:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_refusal_of_the_first_connection_is_returned() {
    within(async {
        let relay = Relay::start(1).await;
        relay.refuse(409, "a newer connection of this client holds the slot");
        let err = Client::connect(config(&relay, Role::App))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            Error::Refused {
                status: 409,
                reason: "a newer connection of this client holds the slot".into()
            }
        );
    })
    .await;
}

#[tokio::test]
async fn a_missing_subprotocol_echo_fails_or_falls_back_to_raw() {
    within(async {
        let relay = Relay::start(1).await;
        relay.no_echo();
        let err = Client::connect(config(&relay, Role::App))
            .await
            .unwrap_err();
        assert_eq!(err, Error::NoSubprotocol);

        let mut cfg = config(&relay, Role::App);
        cfg.raw_fallback = true;
        let mut c = Client::connect(cfg).await.unwrap();
        assert_eq!(c.send_text("echo me").await.unwrap(), 0, "raw: unnumbered");
        let (e, _) = until(&mut c, |e| matches!(e, Event::Message { .. })).await;
        assert_eq!(
            e,
            Event::Message {
                text: true,
                payload: "echo me".into(),
                seq: 0
            }
        );
        // A raw message that starts like a BATCH with a length near 2^64 is a raw message.
        let like_a_batch: &[u8] = &[
            0x07, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        c.send_binary(like_a_batch).await.unwrap();
        let (e, _) = until(&mut c, |e| matches!(e, Event::Message { .. })).await;
        assert_eq!(
            e,
            Event::Message {
                text: false,
                payload: Bytes::from_static(like_a_batch),
                seq: 0
            }
        );
    })
    .await;
}

#[tokio::test]
async fn a_reader_that_stops_stops_its_sender() {
    within(async {
        let relay = Relay::start(1).await;
        relay.set_window(8, 1 << 20);
        let (a, mut b) = pair(&relay).await;
        for i in 1..=8u64 {
            a.send_text(format!("m{i}")).await.unwrap();
        }
        // b reads nothing: no ACK comes, so the ninth send waits.
        let ninth = a.send_text("m9");
        tokio::pin!(ninth);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut ninth)
                .await
                .is_err(),
            "the window is full"
        );
        assert_eq!(a.stats().outbox_len, 8);
        assert_eq!(messages(&mut b, 8).await, numbered(1..9));
        assert_eq!(ninth.await.unwrap(), 9);
        assert_eq!(messages(&mut b, 1).await, numbered(9..10));
    })
    .await;
}

#[tokio::test]
async fn close_waits_for_acks_and_the_peer_sees_bye() {
    within(async {
        let relay = Relay::start(1).await;
        let (a, mut b) = pair(&relay).await;
        for i in 1..=10u64 {
            a.send_text(format!("m{i}")).await.unwrap();
        }
        let reader = tokio::spawn(async move {
            let got = messages(&mut b, 10).await;
            let (_, _) = until(&mut b, |e| {
                *e == Event::Presence(Presence::Offline { left: true })
            })
            .await;
            got
        });
        a.close().await.unwrap();
        assert_eq!(reader.await.unwrap(), numbered(1..11));
    })
    .await;
}

#[tokio::test]
async fn close_times_out_when_nobody_acknowledges() {
    within(async {
        let relay = Relay::start(1).await;
        let mut cfg = config(&relay, Role::App);
        cfg.close_timeout = Duration::from_millis(200);
        let a = Client::connect(cfg).await.unwrap();
        a.send_text("unheard").await.unwrap();
        assert_eq!(
            a.close().await,
            Err(Error::CloseTimedOut { unacknowledged: 1 })
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_replaced_by_another_stops() {
    within(async {
        let relay = Relay::start(1).await;
        let mut a = Client::connect(config(&relay, Role::App)).await.unwrap();
        let _a2 = Client::connect(config(&relay, Role::App)).await.unwrap();
        let (e, _) = until(&mut a, |e| matches!(e, Event::Disconnected { .. })).await;
        assert!(
            matches!(
                e,
                Event::Disconnected {
                    code: Some(4001),
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(a.next_event().await, None, "the client stopped");
        assert_eq!(a.send_text("x").await, Err(Error::Closed));
    })
    .await;
}

#[tokio::test]
async fn a_refused_reconnect_is_reported_and_retried() {
    within(async {
        let relay = Relay::start(1).await;
        let mut a = Client::connect(config(&relay, Role::App)).await.unwrap();
        relay.refuse(409, "held");
        // The move asked by goaway is refused until the relay accepts again.
        relay.goaway("app");
        let (e, _) = until(&mut a, |e| matches!(e, Event::Refused { .. })).await;
        assert_eq!(
            e,
            Event::Refused {
                status: 409,
                reason: "held".into()
            }
        );
        relay.accept();
        let (e, _) = until(&mut a, |e| matches!(e, Event::Connected { .. })).await;
        assert!(
            matches!(e, Event::Connected { r#gen, .. } if r#gen > 2),
            "{e:?}"
        );
        assert!(a.stats().reconnects >= 1);
    })
    .await;
}

#[tokio::test]
async fn fed_messages_go_out_on_flush_in_order_and_across_a_reconnect() {
    within(async {
        let relay = Relay::start(2).await;
        relay.set_window(8, 1 << 20);
        let (mut a, mut b) = pair(&relay).await;
        let sender = a.handle();
        for i in 1..=5u64 {
            assert_eq!(sender.feed_text(format!("m{i}")).await.unwrap(), i);
        }
        // A send after fed messages keeps its place behind them.
        assert_eq!(sender.send_text("m6").await.unwrap(), 6);
        sender.flush().await.unwrap();
        assert_eq!(messages(&mut b, 6).await, numbered(1..7));
        // Fed on one connection, flushed on the next: sent again after the sync, once.
        sender.feed_text("m7").await.unwrap();
        a.reconnect().await;
        sender.feed_text("m8").await.unwrap();
        sender.flush().await.unwrap();
        assert_eq!(messages(&mut b, 2).await, numbered(7..9));
        until(&mut a, |e| *e == Event::Acked { hw: 8 }).await;
        // A fed message waits for the window like a sent one.
        for i in 9..=16u64 {
            sender.feed_text(format!("m{i}")).await.unwrap();
        }
        let full = sender.feed_text("m17");
        tokio::pin!(full);
        sender.flush().await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut full)
                .await
                .is_err(),
            "8 messages wait for b's ACK"
        );
        assert_eq!(messages(&mut b, 8).await, numbered(9..17));
        assert_eq!(full.await.unwrap(), 17);
        sender.flush().await.unwrap();
        assert_eq!(messages(&mut b, 1).await, numbered(17..18));
        drop(a);
        tokio::time::timeout(Duration::from_secs(2), async {
            while sender.flush().await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("a flush errs once the client stopped");
    })
    .await;
}

#[tokio::test]
async fn messages_taken_are_acknowledged_on_the_ack_timer() {
    within(async {
        let relay = Relay::start(1).await;
        let (a, mut b) = pair(&relay).await;
        for i in 1..=5u64 {
            a.send_text(format!("m{i}")).await.unwrap();
        }
        // b writes nothing an ACK could ride along with: its delayed ACK (20 ms) goes alone.
        assert_eq!(messages(&mut b, 5).await, numbered(1..6));
        let (e, _) = until(&mut { a }, |e| *e == Event::Acked { hw: 5 }).await;
        assert_eq!(e, Event::Acked { hw: 5 });
    })
    .await;
}

#[tokio::test]
async fn a_reader_that_gives_up_waiting_misses_nothing() {
    within(async {
        let relay = Relay::start(1).await;
        relay.set_window(8, 1 << 20);
        let (mut a, mut b) = pair(&relay).await;
        let sender = a.handle();
        let sending = tokio::spawn(async move {
            for i in 1..=300u64 {
                sender.send_text(format!("m{i}")).await.unwrap();
            }
        });
        // a takes its events (the ACKs) on its own.
        let a_events = tokio::spawn(async move { while a.next_event().await.is_some() {} });
        let mut got = Vec::new();
        while got.len() < 300 {
            // Waits cut short, often mid-burst: what b was woken for and did not read goes to
            // its client's task, and the next wait finds it.
            let wait = tokio::time::timeout(Duration::from_micros(100), b.next_event()).await;
            if let Ok(Some(Event::Message { payload, seq, .. })) = wait {
                got.push((String::from_utf8(payload.to_vec()).unwrap(), seq));
            }
        }
        assert_eq!(got, numbered(1..301));
        sending.await.unwrap();
        a_events.abort();
    })
    .await;
}
