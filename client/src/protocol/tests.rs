//! Unit tests of the state machine: every rule of PROTOCOL.md §3–§8 with explicit instants, and
//! two machines wired through a simulated lossy, duplicating node across reconnects.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::frame::Welcome;

const A: u64 = 0xaaaa_0000_0000_0001;
const B: u64 = 0xbbbb_0000_0000_0002;
const C: u64 = 0xcccc_0000_0000_0003;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn welcome(r#gen: u32, msgs: u64, bytes: u64) -> Frame {
    Frame::Server(ServerMsg::Welcome(Welcome {
        node: "n1".into(),
        session: 1,
        r#gen,
        window: Window { msgs, bytes },
        max_frame: 1 << 20,
        max_batch: None,
        token_exp: None,
    }))
}

fn online(sid: u64, r#gen: u32) -> Frame {
    Frame::Server(ServerMsg::Peer(PeerInfo {
        state: PeerState::Online,
        sid: Some(sid),
        r#gen: Some(r#gen),
        raw: false,
    }))
}

fn raw_online() -> Frame {
    Frame::Server(ServerMsg::Peer(PeerInfo {
        state: PeerState::Online,
        sid: None,
        r#gen: None,
        raw: true,
    }))
}

fn away() -> Frame {
    Frame::Server(ServerMsg::Peer(PeerInfo {
        state: PeerState::Away,
        sid: None,
        r#gen: None,
        raw: false,
    }))
}

fn sync_frame(sid: u64, r#gen: u32, base: u64, next: u64, rx: Option<u64>, hw: u64) -> Frame {
    sync_reply(sid, r#gen, base, next, rx, hw, false)
}

fn sync_reply(
    sid: u64,
    r#gen: u32,
    base: u64,
    next: u64,
    rx: Option<u64>,
    hw: u64,
    reply: bool,
) -> Frame {
    Frame::Peer(PeerMsg::Sync(Sync {
        sid,
        r#gen,
        tx: TxPos { base, next },
        rx: RxPos { sid: rx, hw },
        reply,
    }))
}

fn data(seq: u64, s: &str) -> Frame {
    Frame::Data {
        seq,
        text: true,
        payload: Bytes::copy_from_slice(s.as_bytes()),
    }
}

fn frames(p: &mut Protocol) -> Vec<Frame> {
    std::iter::from_fn(|| p.poll_frame()).collect()
}

fn events(p: &mut Protocol) -> Vec<Event> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

fn data_seqs(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Data { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn syncs(frames: &[Frame]) -> Vec<Sync> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Peer(PeerMsg::Sync(s)) => Some(*s),
            _ => None,
        })
        .collect()
}

fn acks(frames: &[Frame]) -> Vec<(u64, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Ack { sid, hw } => Some((*sid, *hw)),
            _ => None,
        })
        .collect()
}

fn message_seqs(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn presences(events: &[Event]) -> Vec<Presence> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Presence(p) => Some(*p),
            _ => None,
        })
        .collect()
}

/// A connected machine (gen 1) with the given window, its outputs drained.
fn connected(sid: u64, now: Instant, msgs: u64, bytes: u64) -> Protocol {
    let mut p = Protocol::new(sid, ProtocolConfig::default());
    p.on_connected(1, now);
    p.on_frame(welcome(1, msgs, bytes), now);
    events(&mut p);
    p
}

/// A connected machine whose peer `peer` (gen 1, fresh) is online and synced.
fn synced(sid: u64, peer: u64, now: Instant) -> Protocol {
    let mut p = connected(sid, now, 1024, 1 << 20);
    p.on_frame(online(peer, 1), now);
    p.on_frame(sync_frame(peer, 1, 1, 1, None, 0), now);
    frames(&mut p);
    events(&mut p);
    p
}

#[test]
fn messages_wait_for_the_peer_and_its_sync() {
    let now = Instant::now();
    let mut p = connected(A, now, 1024, 1 << 20);
    assert_eq!(p.send(true, "a".into(), now), Ok(1));
    assert_eq!(p.send(true, "b".into(), now), Ok(2));
    assert!(frames(&mut p).is_empty(), "no peer yet: nothing is written");

    p.on_frame(online(B, 1), now);
    let out = frames(&mut p);
    assert_eq!(syncs(&out).len(), 1, "own sync on peer online");
    assert_eq!(syncs(&out)[0].tx, TxPos { base: 1, next: 3 });
    assert!(data_seqs(&out).is_empty(), "DATA waits for the peer's sync");
    assert_eq!(
        presences(&events(&mut p)),
        vec![Presence::Online],
        "peer online is reported"
    );

    p.on_frame(sync_frame(B, 1, 1, 1, None, 0), now);
    let out = frames(&mut p);
    assert!(
        syncs(&out).is_empty(),
        "own sync was already sent to this session"
    );
    assert_eq!(data_seqs(&out), vec![1, 2]);
    assert_eq!(p.send(true, "c".into(), now), Ok(3));
    assert_eq!(
        data_seqs(&frames(&mut p)),
        vec![3],
        "new messages go at once"
    );
}

#[test]
fn resume_after_reconnect_trims_by_rx_hw_and_resends_the_rest() {
    let now = Instant::now();
    let mut p = synced(A, B, now);
    for i in 1..=5 {
        assert_eq!(p.send(false, Bytes::from(vec![i as u8]), now), Ok(i));
    }
    assert_eq!(data_seqs(&frames(&mut p)), vec![1, 2, 3, 4, 5]);
    p.on_frame(Frame::Ack { sid: A, hw: 1 }, now);
    assert_eq!(p.outbox_len(), 4);

    p.on_disconnected(now);
    let later = now + ms(300);
    p.on_connected(2, later);
    p.on_frame(welcome(2, 1024, 1 << 20), later);
    p.on_frame(online(B, 1), later);
    let out = frames(&mut p);
    let own = syncs(&out);
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].r#gen, 2, "the sync names the new connection");
    assert_eq!(own[0].tx, TxPos { base: 2, next: 6 });
    assert!(data_seqs(&out).is_empty());

    // The peer had received up to 3 (acknowledging only 1).
    p.on_frame(sync_frame(B, 1, 1, 1, Some(A), 3), later);
    let out = frames(&mut p);
    assert_eq!(
        data_seqs(&out),
        vec![4, 5],
        "what the peer received is skipped, the rest resent in order"
    );
    assert_eq!(p.outbox_len(), 4, "only an ACK releases a message");
    assert_eq!(p.acked(), 1);
    p.on_frame(Frame::Ack { sid: A, hw: 3 }, later);
    assert_eq!(p.outbox_len(), 2);
    assert_eq!(p.connections(), 2);
}

#[test]
fn a_fresh_peer_gets_everything_resent() {
    let now = Instant::now();
    let mut p = synced(A, B, now);
    for _ in 0..3 {
        p.send(true, "x".into(), now).unwrap();
    }
    frames(&mut p);
    // The peer restarted (new sid C): it names another stream, so nothing is trimmed.
    p.on_frame(online(C, 1), now);
    p.on_frame(sync_frame(C, 1, 1, 1, Some(0x1234), 7), now);
    let out = frames(&mut p);
    assert_eq!(syncs(&out).len(), 1);
    assert_eq!(data_seqs(&out), vec![1, 2, 3]);
    // The sync is written before the resends.
    assert!(matches!(out[0], Frame::Peer(PeerMsg::Sync(_))));
}

#[test]
fn a_fresh_receiver_adopts_the_base_and_drops_duplicates() {
    let now = Instant::now();
    let mut p = connected(B, now, 1024, 1 << 20);
    p.on_frame(online(A, 1), now);
    // Numbered DATA before the peer's sync is dropped.
    p.on_frame(data(41, "early"), now);
    p.on_frame(sync_frame(A, 1, 41, 57, None, 0), now);
    assert_eq!(p.rx_sid(), Some(A));
    assert_eq!(p.rx_hw(), 40);
    p.on_frame(data(40, "old"), now);
    p.on_frame(data(41, "first"), now);
    p.on_frame(data(41, "first"), now);
    p.on_frame(data(42, "second"), now);
    let ev = events(&mut p);
    assert_eq!(message_seqs(&ev), vec![41, 42]);
    assert!(ev.contains(&Event::Message {
        text: true,
        payload: "first".into(),
        seq: 41
    }));
    assert_eq!(p.duplicates_dropped(), 2);
    assert_eq!(p.rx_hw(), 42);
}

#[test]
fn a_duplicate_is_acknowledged_again() {
    let now = Instant::now();
    let mut p = synced(B, A, now);
    p.on_frame(data(1, "a"), now);
    p.on_taken(A, 1, now);
    assert_eq!(p.poll_timeout(), Some(now + ms(20)));
    p.on_tick(now + ms(20));
    assert_eq!(acks(&frames(&mut p)), vec![(A, 1)]);
    assert_eq!(p.poll_timeout(), None, "nothing left to acknowledge");

    let t = now + ms(100);
    p.on_frame(data(1, "a"), t);
    assert_eq!(p.duplicates_dropped(), 1);
    assert_eq!(p.poll_timeout(), Some(t + ms(20)));
    p.on_tick(t + ms(20));
    assert_eq!(acks(&frames(&mut p)), vec![(A, 1)], "the ACK is repeated");
}

#[test]
fn a_gap_sends_a_rate_limited_sync() {
    let now = Instant::now();
    let mut p = synced(B, A, now);
    p.on_frame(data(1, "a"), now);
    p.on_frame(data(3, "c"), now);
    let out = frames(&mut p);
    let s = syncs(&out);
    assert_eq!(s.len(), 1, "a gap asks for a resend");
    assert_eq!(
        s[0].rx,
        RxPos {
            sid: Some(A),
            hw: 1
        }
    );
    assert!(!s[0].reply);
    assert_eq!(p.gaps_seen(), 1);

    p.on_frame(data(4, "d"), now + ms(50));
    assert!(syncs(&frames(&mut p)).is_empty(), "at most one per 100 ms");
    p.on_frame(data(5, "e"), now + ms(100));
    assert_eq!(syncs(&frames(&mut p)).len(), 1, "again after 100 ms");

    // Once hw moves, a new gap is reported at once.
    p.on_frame(data(2, "b"), now + ms(110));
    p.on_frame(data(4, "d"), now + ms(111));
    assert_eq!(p.rx_hw(), 2);
    assert_eq!(
        syncs(&frames(&mut p)).len(),
        1,
        "hw moved since the last gap sync: no rate limit"
    );
    assert_eq!(p.gaps_seen(), 4);
}

#[test]
fn a_gap_after_the_high_water_mark_moved_is_not_rate_limited() {
    let now = Instant::now();
    let mut p = synced(B, A, now);
    p.on_frame(data(2, "b"), now);
    assert_eq!(syncs(&frames(&mut p)).len(), 1);
    p.on_frame(data(1, "a"), now + ms(10));
    p.on_frame(data(3, "c"), now + ms(10));
    assert_eq!(p.rx_hw(), 1);
    assert_eq!(
        syncs(&frames(&mut p)).len(),
        1,
        "hw moved since the last gap sync"
    );
}

#[test]
fn a_new_peer_stream_is_reported_with_what_was_delivered() {
    let now = Instant::now();
    let mut p = synced(B, A, now);
    for (i, s) in ["a", "b", "c"].into_iter().enumerate() {
        p.on_frame(data(i as u64 + 1, s), now);
    }
    p.on_taken(A, 2, now);
    events(&mut p);
    p.on_frame(online(C, 1), now);
    p.on_frame(sync_frame(C, 1, 1, 4, None, 0), now);
    let ev = events(&mut p);
    assert!(ev.contains(&Event::StreamReset {
        old_sid: A,
        delivered_hw: 3
    }));
    assert_eq!(p.rx_sid(), Some(C));
    assert_eq!(p.rx_hw(), 0);
    // Taking an old stream's message acknowledges nothing of the new one.
    p.on_taken(A, 3, now);
    p.on_tick(now + ms(50));
    assert!(acks(&frames(&mut p)).is_empty());
    p.on_frame(data(1, "new"), now);
    assert_eq!(message_seqs(&events(&mut p)), vec![1]);
}

#[test]
fn no_stream_reset_when_nothing_was_delivered() {
    let now = Instant::now();
    let mut p = synced(B, A, now);
    p.on_frame(online(C, 1), now);
    p.on_frame(sync_frame(C, 1, 1, 1, None, 0), now);
    assert!(
        !events(&mut p)
            .iter()
            .any(|e| matches!(e, Event::StreamReset { .. }))
    );
}

#[test]
fn stale_or_foreign_acks_are_ignored() {
    let now = Instant::now();
    let mut p = synced(A, B, now);
    for _ in 0..4 {
        p.send(true, "x".into(), now).unwrap();
    }
    p.on_frame(Frame::Ack { sid: C, hw: 4 }, now);
    assert_eq!(p.outbox_len(), 4, "another stream's ACK");
    p.on_frame(Frame::Ack { sid: A, hw: 9 }, now);
    assert_eq!(p.outbox_len(), 4, "an ACK above what was sent");
    p.on_frame(Frame::Ack { sid: A, hw: 2 }, now);
    assert_eq!(p.outbox_len(), 2);
    p.on_frame(Frame::Ack { sid: A, hw: 1 }, now);
    assert_eq!(p.outbox_len(), 2, "an older ACK");
    assert_eq!(p.acked(), 2);
    let acked: Vec<_> = events(&mut p)
        .into_iter()
        .filter(|e| matches!(e, Event::Acked { .. }))
        .collect();
    assert_eq!(acked, vec![Event::Acked { hw: 2 }]);
}

#[test]
fn the_window_blocks_at_its_message_count() {
    let now = Instant::now();
    let mut p = connected(A, now, 3, 1 << 20);
    p.on_frame(online(B, 1), now);
    p.on_frame(sync_frame(B, 1, 1, 1, None, 0), now);
    for seq in 1..=3 {
        assert_eq!(p.send(true, "x".into(), now), Ok(seq));
    }
    assert_eq!(p.send(true, "x".into(), now), Err(SendError::WindowFull));
    assert_eq!(p.next_seq(), 4, "a refused message takes no seq");
    p.on_frame(Frame::Ack { sid: A, hw: 1 }, now);
    assert_eq!(p.send(true, "x".into(), now), Ok(4));
    assert_eq!(p.send(true, "x".into(), now), Err(SendError::WindowFull));
}

#[test]
fn the_window_blocks_at_its_byte_count() {
    let now = Instant::now();
    let mut p = connected(A, now, 100, 10);
    assert_eq!(p.send(false, Bytes::from(vec![0; 6]), now), Ok(1));
    assert_eq!(
        p.send(false, Bytes::from(vec![0; 5]), now),
        Err(SendError::WindowFull)
    );
    assert_eq!(p.send(false, Bytes::from(vec![0; 4]), now), Ok(2));
    p.on_frame(online(B, 1), now);
    p.on_frame(sync_frame(B, 1, 1, 1, None, 0), now);
    p.on_frame(Frame::Ack { sid: A, hw: 2 }, now);
    assert_eq!(
        p.send(false, Bytes::from(vec![0; 25]), now),
        Ok(3),
        "a single message may exceed the bytes when nothing is outstanding"
    );
    assert_eq!(
        p.send(false, Bytes::from(vec![0; 1]), now),
        Err(SendError::WindowFull)
    );
}

#[test]
fn a_frame_above_max_frame_is_refused() {
    let now = Instant::now();
    let mut p = Protocol::new(A, ProtocolConfig::default());
    p.on_connected(1, now);
    p.on_frame(
        Frame::Server(ServerMsg::Welcome(Welcome {
            node: "n".into(),
            session: 1,
            r#gen: 1,
            window: DEFAULT_WINDOW,
            max_frame: 10,
            max_batch: None,
            token_exp: None,
        })),
        now,
    );
    assert_eq!(p.send(false, Bytes::from(vec![0; 8]), now), Ok(1));
    assert_eq!(
        p.send(false, Bytes::from(vec![0; 9]), now),
        Err(SendError::TooLarge { len: 11, max: 10 })
    );
}

#[test]
fn acks_go_after_32_messages_20_ms_or_half_the_window() {
    let now = Instant::now();
    let mut p = synced(B, A, now);
    for seq in 1..=40 {
        p.on_frame(data(seq, "m"), now);
    }
    assert!(
        acks(&frames(&mut p)).is_empty(),
        "nothing is acked before it is taken"
    );
    p.on_tick(now + ms(100));
    assert!(acks(&frames(&mut p)).is_empty());
    for seq in 1..=31 {
        p.on_taken(A, seq, now);
    }
    assert!(acks(&frames(&mut p)).is_empty());
    p.on_taken(A, 32, now);
    assert_eq!(acks(&frames(&mut p)), vec![(A, 32)], "32 unacknowledged");
    p.on_taken(A, 33, now + ms(5));
    assert_eq!(p.poll_timeout(), Some(now + ms(25)));
    p.on_tick(now + ms(24));
    assert!(acks(&frames(&mut p)).is_empty());
    p.on_tick(now + ms(25));
    assert_eq!(
        acks(&frames(&mut p)),
        vec![(A, 33)],
        "20 ms after the first"
    );

    let mut q = connected(B, now, 8, 1 << 20);
    q.on_frame(online(A, 1), now);
    q.on_frame(sync_frame(A, 1, 1, 1, None, 0), now);
    frames(&mut q);
    for seq in 1..=4 {
        q.on_frame(data(seq, "m"), now);
        q.on_taken(A, seq, now);
    }
    assert_eq!(acks(&frames(&mut q)), vec![(A, 4)], "half of a window of 8");
}

#[test]
fn half_the_byte_window_sends_an_ack() {
    let now = Instant::now();
    let mut p = connected(B, now, 1024, 100);
    p.on_frame(online(A, 1), now);
    p.on_frame(sync_frame(A, 1, 1, 1, None, 0), now);
    frames(&mut p);
    let big = "x".repeat(30);
    p.on_frame(data(1, &big), now);
    p.on_frame(data(2, &big), now);
    p.on_taken(A, 1, now);
    assert!(acks(&frames(&mut p)).is_empty());
    p.on_taken(A, 2, now);
    assert_eq!(acks(&frames(&mut p)), vec![(A, 2)]);
}

#[test]
fn no_ack_progress_sends_a_sync_asking_for_a_reply() {
    let now = Instant::now();
    let mut p = synced(A, B, now);
    p.send(true, "a".into(), now).unwrap();
    p.send(true, "b".into(), now).unwrap();
    frames(&mut p);
    assert_eq!(p.poll_timeout(), Some(now + ms(2000)));
    p.on_tick(now + ms(1999));
    assert!(frames(&mut p).is_empty());
    let t = now + ms(2000);
    p.on_tick(t);
    let s = syncs(&frames(&mut p));
    assert_eq!(s.len(), 1);
    assert!(s[0].reply);
    assert_eq!(p.poll_timeout(), Some(t + ms(2000)), "the timer restarts");

    // The answer names what the peer has: 1 is trimmed, 2 resent.
    p.on_frame(sync_frame(B, 1, 1, 1, Some(A), 1), t);
    let out = frames(&mut p);
    assert!(
        syncs(&out).is_empty(),
        "an answer (reply: false) is not answered"
    );
    assert_eq!(data_seqs(&out), vec![2]);
}

#[test]
fn a_sync_asking_for_a_reply_is_answered() {
    let now = Instant::now();
    let mut p = synced(B, A, now);
    p.on_frame(data(1, "a"), now);
    p.on_frame(sync_reply(A, 1, 1, 2, None, 0, true), now);
    let s = syncs(&frames(&mut p));
    assert_eq!(s.len(), 1);
    assert!(!s[0].reply);
    assert_eq!(
        s[0].rx,
        RxPos {
            sid: Some(A),
            hw: 1
        }
    );
}

#[test]
fn presence_quiet_grace_and_bye() {
    let now = Instant::now();
    let mut p = connected(A, now, 1024, 1 << 20);
    p.on_frame(online(B, 1), now);
    assert_eq!(presences(&events(&mut p)), vec![Presence::Online]);

    // Away shorter than quiet: nothing.
    p.on_frame(away(), now + ms(100));
    p.on_tick(now + ms(1099));
    p.on_frame(online(B, 2), now + ms(1099));
    p.on_tick(now + ms(5000));
    assert!(presences(&events(&mut p)).is_empty());

    // Away for quiet, then grace.
    let t = now + ms(10_000);
    p.on_frame(away(), t);
    assert_eq!(p.poll_timeout(), Some(t + ms(1000)));
    p.on_tick(t + ms(999));
    assert!(presences(&events(&mut p)).is_empty());
    p.on_tick(t + ms(1000));
    assert_eq!(presences(&events(&mut p)), vec![Presence::Reconnecting]);
    assert_eq!(p.poll_timeout(), Some(t + ms(30_000)));
    p.on_tick(t + ms(29_999));
    assert!(presences(&events(&mut p)).is_empty());
    p.on_tick(t + ms(30_000));
    assert_eq!(
        presences(&events(&mut p)),
        vec![Presence::Offline { left: false }]
    );
    assert_eq!(p.poll_timeout(), None);

    // Back, then bye: offline at once, and the following away changes nothing.
    let t = t + ms(40_000);
    p.on_frame(online(B, 3), t);
    p.on_frame(Frame::Peer(PeerMsg::Bye), t);
    p.on_frame(away(), t);
    p.on_tick(t + ms(60_000));
    assert_eq!(
        presences(&events(&mut p)),
        vec![Presence::Online, Presence::Offline { left: true }]
    );
}

#[test]
fn an_observer_reconnect_keeps_the_presence_timers() {
    let now = Instant::now();
    let mut p = connected(A, now, 1024, 1 << 20);
    p.on_frame(online(B, 1), now);
    events(&mut p);
    // Own connection lost: the peer was last seen now.
    p.on_disconnected(now);
    p.on_connected(2, now + ms(600));
    p.on_frame(away(), now + ms(600));
    p.on_tick(now + ms(999));
    assert!(presences(&events(&mut p)).is_empty());
    p.on_tick(now + ms(1000));
    assert_eq!(presences(&events(&mut p)), vec![Presence::Reconnecting]);

    // A quick own reconnect with the peer still there reports nothing.
    let mut q = connected(A, now, 1024, 1 << 20);
    q.on_frame(online(B, 1), now);
    events(&mut q);
    q.on_disconnected(now);
    q.on_connected(2, now + ms(300));
    q.on_frame(online(B, 1), now + ms(300));
    q.on_tick(now + ms(5000));
    assert!(presences(&events(&mut q)).is_empty());
}

#[test]
fn a_peer_never_seen_is_offline_after_quiet() {
    let now = Instant::now();
    let mut p = connected(A, now, 1024, 1 << 20);
    p.on_frame(away(), now);
    p.on_tick(now + ms(1000));
    assert_eq!(
        presences(&events(&mut p)),
        vec![Presence::Offline { left: false }]
    );
}

#[test]
fn the_peers_sync_reports_it_online() {
    let now = Instant::now();
    let mut p = connected(A, now, 1024, 1 << 20);
    p.on_frame(away(), now);
    p.on_frame(sync_frame(B, 4, 1, 1, None, 0), now);
    assert_eq!(presences(&events(&mut p)), vec![Presence::Online]);
    let out = frames(&mut p);
    assert_eq!(syncs(&out).len(), 1, "own sync to the session that spoke");
    assert_eq!(p.peer(), PeerView::OnlineV1 { sid: B, r#gen: 4 });
    // The node's later notice of the same session changes nothing.
    p.on_frame(online(B, 4), now);
    assert!(frames(&mut p).is_empty());
    // An older session's sync is ignored.
    p.on_frame(sync_frame(B, 3, 1, 1, None, 0), now);
    assert!(frames(&mut p).is_empty());
}

#[test]
fn a_raw_peer_gets_unnumbered_messages_and_no_control_frames() {
    let now = Instant::now();
    let mut p = connected(A, now, 1024, 1 << 20);
    p.send(true, "queued".into(), now).unwrap();
    p.on_frame(raw_online(), now);
    let ev = events(&mut p);
    assert!(ev.contains(&Event::RawPeer));
    assert_eq!(presences(&ev), vec![Presence::Online]);
    let out = frames(&mut p);
    assert_eq!(
        out,
        vec![data(0, "queued")],
        "the outbox goes once, unnumbered"
    );
    assert_eq!(p.outbox_len(), 0);

    assert_eq!(p.send(true, "hi".into(), now), Ok(0));
    assert_eq!(frames(&mut p), vec![data(0, "hi")]);

    p.on_frame(data(0, "from raw"), now);
    p.on_frame(data(5, "numbered from nowhere"), now);
    let ev = events(&mut p);
    assert_eq!(
        ev,
        vec![Event::Message {
            text: true,
            payload: "from raw".into(),
            seq: 0
        }]
    );
    p.on_tick(now + ms(60_000));
    assert!(
        frames(&mut p).is_empty(),
        "no sync and no ACK to a raw peer"
    );

    // The window is free again for a later v1 peer.
    p.on_frame(online(B, 1), now);
    let s = syncs(&frames(&mut p));
    assert_eq!(s[0].tx, TxPos { base: 2, next: 2 });
}

#[test]
fn frames_and_events_before_a_connection_are_ignored() {
    let now = Instant::now();
    let mut p = Protocol::new(A, ProtocolConfig::default());
    p.on_frame(online(B, 1), now);
    p.on_frame(data(0, "x"), now);
    assert!(events(&mut p).is_empty());
    assert!(frames(&mut p).is_empty());
    p.bye();
    assert!(frames(&mut p).is_empty());
}

/// A deterministic xorshift generator for the simulation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// One client of the simulated pair.
struct Side {
    p: Protocol,
    r#gen: u32,
    up: bool,
    reconnect_at: Option<Instant>,
    sent: u64,
    received: Vec<u64>,
}

impl Side {
    fn new(sid: u64) -> Side {
        Side {
            p: Protocol::new(sid, ProtocolConfig::default()),
            r#gen: 0,
            up: false,
            reconnect_at: None,
            sent: 0,
            received: Vec::new(),
        }
    }
}

/// Two machines wired through a node that loses and duplicates frames (never reorders them),
/// with both sides reconnecting at random.
struct Sim {
    sides: [Side; 2],
    /// `queues[i]`: frames on their way to side `i`.
    queues: [VecDeque<Frame>; 2],
    rng: Rng,
    now: Instant,
}

const WINDOW: u64 = 16;

impl Sim {
    fn connect(&mut self, i: usize) {
        let now = self.now;
        let o = 1 - i;
        let side = &mut self.sides[i];
        side.r#gen += 1;
        side.up = true;
        side.reconnect_at = None;
        side.p.on_connected(side.r#gen, now);
        let (sid, r#gen) = (side.p.sid(), side.r#gen);
        self.queues[i].clear();
        self.queues[i].push_back(welcome(r#gen, WINDOW, 1 << 20));
        if self.sides[o].up {
            let other = &self.sides[o];
            self.queues[i].push_back(online(other.p.sid(), other.r#gen));
            self.queues[o].push_back(online(sid, r#gen));
        } else {
            self.queues[i].push_back(away());
        }
    }

    fn disconnect(&mut self, i: usize, down_for: Duration) {
        let now = self.now;
        let side = &mut self.sides[i];
        side.up = false;
        side.p.on_disconnected(now);
        side.reconnect_at = Some(now + down_for);
        // Frames on their way to it are lost with its socket; its own in flight still arrive.
        self.queues[i].clear();
        if self.sides[1 - i].up {
            self.queues[1 - i].push_back(away());
        }
    }

    fn step(&mut self, n: u64, disrupt: bool) {
        let now = self.now;
        for i in 0..2 {
            if disrupt && self.sides[i].up && self.rng.chance(10) {
                let down = ms(self.rng.next() % 1500);
                self.disconnect(i, down);
            }
            if self.sides[i].reconnect_at.is_some_and(|t| t <= now) {
                self.connect(i);
            }
        }
        for i in 0..2 {
            let side = &mut self.sides[i];
            let mut burst = 0;
            while side.sent < n && burst < 3 && side.p.window_open(8) {
                burst += 1;
                let payload = Bytes::from(side.sent.to_string());
                side.p.send(true, payload, now).expect("the window is open");
                side.sent += 1;
            }
        }
        for i in 0..2 {
            let o = 1 - i;
            while let Some(frame) = self.sides[i].p.poll_frame() {
                if disrupt && self.rng.chance(20) {
                    continue;
                }
                if disrupt && self.rng.chance(20) {
                    self.queues[o].push_back(frame.clone());
                }
                self.queues[o].push_back(frame);
            }
        }
        for i in 0..2 {
            while let Some(frame) = self.queues[i].pop_front() {
                self.sides[i].p.on_frame(frame, now);
            }
            let side = &mut self.sides[i];
            while let Some(event) = side.p.poll_event() {
                if let Event::Message { seq, payload, .. } = event {
                    let n: u64 = std::str::from_utf8(&payload).unwrap().parse().unwrap();
                    side.received.push(n);
                    let peer = side.p.rx_sid().expect("a stream is received");
                    side.p.on_taken(peer, seq, now);
                }
            }
            side.p.on_tick(now);
        }
        self.now += ms(5);
    }

    fn done(&self, n: u64) -> bool {
        self.sides
            .iter()
            .all(|s| s.sent == n && s.received.len() as u64 == n && s.p.outbox_len() == 0 && s.up)
    }
}

fn simulate(seed: u64, n: u64) {
    let mut sim = Sim {
        sides: [Side::new(A), Side::new(B)],
        queues: [VecDeque::new(), VecDeque::new()],
        rng: Rng(seed),
        now: Instant::now(),
    };
    sim.connect(0);
    sim.connect(1);
    let mut steps = 0;
    while !sim.done(n) {
        steps += 1;
        assert!(steps < 200_000, "no convergence (seed {seed})");
        // Disruption for most of the run, then a calm end so the last repairs go through.
        sim.step(n, steps < 20_000);
    }
    let expected: Vec<u64> = (0..n).collect();
    for (i, side) in sim.sides.iter().enumerate() {
        assert_eq!(side.received, expected, "side {i}, seed {seed}");
        assert!(side.r#gen > 2, "side {i} reconnected (seed {seed})");
    }
    let dups: u64 = sim.sides.iter().map(|s| s.p.duplicates_dropped()).sum();
    let gaps: u64 = sim.sides.iter().map(|s| s.p.gaps_seen()).sum();
    assert!(dups > 0, "the run exercised duplicates (seed {seed})");
    assert!(gaps > 0, "the run exercised gaps (seed {seed})");
}

#[test]
fn two_machines_exchange_exactly_once_in_order_across_reconnects() {
    for seed in [1, 7, 0x5eed, 0xdead_beef, 42] {
        simulate(seed, 3000);
    }
}

#[test]
fn a_sync_releases_nothing_and_frees_no_window() {
    let now = Instant::now();
    let mut p = connected(A, now, 2, 1 << 20);
    p.on_frame(online(B, 1), now);
    p.on_frame(sync_frame(B, 1, 1, 1, None, 0), now);
    p.send(true, "a".into(), now).unwrap();
    p.send(true, "b".into(), now).unwrap();
    frames(&mut p);
    // The peer's sync says its library has both: nothing is resent, and nothing released
    // (its application may not have taken them yet)...
    p.on_frame(sync_reply(B, 1, 1, 1, Some(A), 2, false), now);
    assert!(data_seqs(&frames(&mut p)).is_empty());
    assert_eq!(p.outbox_len(), 2);
    // ...and the node counts from ACKs and this client's own syncs, so the window stays full.
    assert_eq!(p.send(true, "c".into(), now), Err(SendError::WindowFull));
    p.on_frame(Frame::Ack { sid: A, hw: 2 }, now);
    assert_eq!(p.send(true, "c".into(), now), Ok(3));
}

#[test]
fn a_receiver_whose_application_stopped_reading_keeps_the_window_full_across_retransmissions() {
    let now = Instant::now();
    let mut p = connected(A, now, 4, 1 << 20);
    p.on_frame(online(B, 1), now);
    p.on_frame(sync_frame(B, 1, 1, 1, None, 0), now);
    for i in 1..=4 {
        assert_eq!(p.send(true, "x".into(), now), Ok(i));
    }
    frames(&mut p);
    // No ACK: the peer's application takes nothing. The retransmission timer asks for
    // positions; the answers say the peer's library has 2, then all 4.
    let mut t = now;
    for hw in [2, 4] {
        t += ms(2000);
        p.on_tick(t);
        assert_eq!(syncs(&frames(&mut p)).len(), 1);
        p.on_frame(sync_frame(B, 1, 1, 1, Some(A), hw), t);
        frames(&mut p);
        assert_eq!(
            p.send(true, "y".into(), t),
            Err(SendError::WindowFull),
            "a sync never frees the window"
        );
    }
    assert_eq!(p.outbox_len(), 4, "and releases nothing");
    // The application takes them: the ACK frees the window.
    p.on_frame(Frame::Ack { sid: A, hw: 4 }, t);
    assert_eq!(p.outbox_len(), 0);
    assert_eq!(p.send(true, "y".into(), t), Ok(5));
}

#[test]
fn a_fresh_peer_stream_gets_what_its_predecessor_never_acknowledged() {
    let now = Instant::now();
    let mut p = connected(A, now, 2, 1 << 20);
    p.on_frame(online(B, 1), now);
    p.on_frame(sync_frame(B, 1, 1, 1, None, 0), now);
    p.send(true, "a".into(), now).unwrap();
    p.send(true, "b".into(), now).unwrap();
    frames(&mut p);
    // The peer's library had both, its application took none, and it restarts: its new
    // stream adopts this client's base and gets both again.
    p.on_frame(online(C, 1), now);
    p.on_frame(sync_frame(C, 1, 1, 1, None, 0), now);
    let out = frames(&mut p);
    assert_eq!(syncs(&out).last().map(|s| s.tx.base), Some(1));
    assert_eq!(data_seqs(&out), vec![1, 2]);
    assert_eq!(p.send(true, "c".into(), now), Err(SendError::WindowFull));
    p.on_frame(Frame::Ack { sid: A, hw: 2 }, now);
    assert_eq!(p.send(true, "c".into(), now), Ok(3));
}

#[test]
fn a_sync_of_the_same_stream_that_skipped_ahead_is_a_reset() {
    let now = Instant::now();
    let mut p = synced(B, A, now);
    p.on_frame(data(1, "a"), now);
    events(&mut p);
    // The sender no longer has 2..=4: they are lost, and said so.
    p.on_frame(sync_frame(A, 2, 5, 6, Some(B), 0), now);
    let ev = events(&mut p);
    assert!(ev.contains(&Event::StreamReset {
        old_sid: A,
        delivered_hw: 1
    }));
    assert_eq!(p.rx_hw(), 4);
    p.on_frame(data(5, "e"), now);
    assert_eq!(message_seqs(&events(&mut p)), vec![5]);
}

#[test]
fn numbered_data_of_the_peer_waits_for_its_sync_after_an_own_reconnect() {
    let now = Instant::now();
    let mut p = synced(B, A, now);
    p.on_frame(data(1, "a"), now);
    p.on_disconnected(now);
    p.on_connected(2, now);
    p.on_frame(welcome(2, 1024, 1 << 20), now);
    p.on_frame(online(A, 1), now);
    let own = syncs(&frames(&mut p));
    assert_eq!(
        own[0].rx,
        RxPos {
            sid: Some(A),
            hw: 1
        },
        "the sync states what was received"
    );
    p.on_frame(data(2, "b"), now);
    assert_eq!(
        message_seqs(&events(&mut p)),
        vec![1],
        "2 came before A's sync: dropped"
    );
    p.on_frame(sync_frame(A, 1, 2, 3, Some(B), 0), now);
    p.on_frame(data(2, "b"), now);
    assert_eq!(message_seqs(&events(&mut p)), vec![2]);
}

#[test]
fn frames_stay_exact_as_acknowledged_ones_leave_the_outbox_store() {
    let now = Instant::now();
    let mut p = synced(A, B, now);
    let body = |i: u64| Bytes::from(vec![i as u8; 1000 + i as usize]);
    for i in 1..=40 {
        assert_eq!(p.send(i % 2 == 0, body(i), now), Ok(i));
    }
    frames(&mut p);
    // Acknowledging most of the outbox moves what is left to the store's front; more sends
    // follow behind it.
    p.on_frame(Frame::Ack { sid: A, hw: 30 }, now);
    for i in 41..=45 {
        assert_eq!(p.send(false, body(i), now), Ok(i));
    }
    let mut written = Vec::new();
    let mut buf = BytesMut::new();
    while p.poll_frame_into(&mut buf) {
        written.push(Frame::decode(buf.split().freeze()).expect("a valid frame"));
    }
    assert_eq!(data_seqs(&written), (41..=45).collect::<Vec<_>>());
    // The peer received up to 33: the rest is resent, byte for byte.
    p.on_frame(sync_frame(B, 1, 1, 1, Some(A), 33), now);
    let resent: Vec<Frame> = frames(&mut p)
        .into_iter()
        .filter(|f| matches!(f, Frame::Data { .. }))
        .collect();
    let expected: Vec<Frame> = (34..=45)
        .map(|i| Frame::Data {
            seq: i,
            text: i <= 40 && i % 2 == 0,
            payload: body(i),
        })
        .collect();
    assert_eq!(resent, expected);
    p.on_frame(Frame::Ack { sid: A, hw: 45 }, now);
    assert_eq!(p.outbox_len(), 0);
    // A raw peer gets what waits unnumbered, with its payload.
    assert_eq!(p.send(false, body(46), now), Ok(46));
    p.on_frame(raw_online(), now);
    let out = frames(&mut p);
    assert!(out.contains(&Frame::Data {
        seq: 0,
        text: false,
        payload: body(46),
    }));
}

#[test]
fn a_client_that_never_gets_its_peers_sync_asks_again_soon() {
    let now = Instant::now();
    let mut p = connected(A, now, 1024, 1 << 20);
    p.on_frame(online(B, 1), now);
    let own = syncs(&frames(&mut p));
    assert_eq!(own.len(), 1);
    assert!(!own[0].reply);
    // The peer's sync was lost on the way; with an empty outbox no retransmission would ask.
    let quarter = ProtocolConfig::default().ack_timeout / 4;
    assert_eq!(p.poll_timeout(), Some(now + quarter));
    p.on_tick(now + quarter);
    let asked = syncs(&frames(&mut p));
    assert_eq!(asked.len(), 1);
    assert!(asked[0].reply, "the question asks for an answer");
    // Once the peer's sync came, nothing more is asked.
    p.on_frame(sync_frame(B, 1, 1, 1, None, 0), now + quarter);
    frames(&mut p);
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn an_ack_due_later_rides_along_with_frames_written_now() {
    let now = Instant::now();
    let mut p = synced(A, B, now);
    p.on_frame(data(1, "x"), now);
    p.on_frame(data(2, "y"), now);
    events(&mut p);
    p.on_taken(B, 2, now);
    p.piggyback_ack();
    assert!(
        frames(&mut p).is_empty(),
        "nothing to write: the ACK waits for its timer"
    );

    assert_eq!(p.send(true, "a".into(), now), Ok(1));
    p.piggyback_ack();
    let out = frames(&mut p);
    assert_eq!(data_seqs(&out), vec![1]);
    assert_eq!(acks(&out), vec![(B, 2)], "the ACK joins the write");
    assert_eq!(
        p.poll_timeout(),
        Some(now + ProtocolConfig::default().ack_timeout),
        "no delayed ACK is left, only the retransmission timer"
    );

    assert_eq!(p.send(true, "b".into(), now), Ok(2));
    p.piggyback_ack();
    assert!(
        acks(&frames(&mut p)).is_empty(),
        "nothing new taken: no ACK"
    );
}

/// The messages `p` writes now, each as the frames it carries, with whether it is a BATCH.
fn messages(p: &mut Protocol) -> Vec<(bool, Vec<Frame>)> {
    let mut buf = BytesMut::new();
    std::iter::from_fn(|| {
        p.poll_message_into(&mut buf).then(|| {
            let message = buf.split().freeze();
            let batch = message[0] == KIND_BATCH;
            let frames = crate::frame::decode_message(message)
                .collect::<Result<Vec<_>, _>>()
                .expect("well formed");
            (batch, frames)
        })
    })
    .collect()
}

#[test]
fn data_and_acks_in_a_row_go_in_one_batch_and_control_frames_alone() {
    let now = Instant::now();
    let mut p = synced(A, B, now);
    p.on_frame(data(1, "x"), now);
    p.take(B, 1, || now);
    assert!(!p.has_frames(), "one message taken: its ACK waits");
    for text in ["a", "bb", "ccc"] {
        p.send(true, Bytes::from(text), now).unwrap();
    }
    assert!(p.piggyback_ack(), "the ACK joins the frames written");
    p.send_sync(false);
    p.send(false, Bytes::from_static(b"d"), now).unwrap();
    let written = messages(&mut p);
    assert_eq!(written.len(), 3, "{written:?}");
    assert_eq!(
        written[0],
        (
            true,
            vec![
                data(1, "a"),
                data(2, "bb"),
                data(3, "ccc"),
                Frame::Ack { sid: B, hw: 1 }
            ]
        )
    );
    assert!(
        matches!(&written[1], (false, f) if syncs(f).len() == 1),
        "a sync alone"
    );
    assert_eq!(data_seqs(&written[2].1), vec![4]);
    assert!(!written[2].0, "a frame alone is written bare");
}

#[test]
fn a_batch_stays_within_max_frame() {
    let now = Instant::now();
    let mut p = synced(A, B, now);
    // DATA of 4 bytes takes 6; two in a BATCH take 1 + 2 * (1 + 6) = 15.
    p.max_frame = Some(15);
    for seq in 1..=5u8 {
        p.send(false, Bytes::from(vec![seq; 4]), now).unwrap();
    }
    let written = messages(&mut p);
    let shape: Vec<(bool, Vec<u64>)> = written
        .iter()
        .map(|(batch, frames)| (*batch, data_seqs(frames)))
        .collect();
    assert_eq!(
        shape,
        [(true, vec![1, 2]), (true, vec![3, 4]), (false, vec![5])]
    );
    p.max_frame = Some(14);
    for seq in 6..=7u8 {
        p.send(false, Bytes::from(vec![seq; 4]), now).unwrap();
    }
    assert_eq!(
        messages(&mut p)
            .iter()
            .map(|(batch, _)| *batch)
            .collect::<Vec<_>>(),
        [false, false],
        "two do not fit in 14 bytes"
    );
}

#[test]
fn an_acknowledged_message_is_left_out_of_a_batch() {
    let now = Instant::now();
    let mut p = synced(A, B, now);
    for seq in 1..=3u8 {
        p.send(false, Bytes::from(vec![seq]), now).unwrap();
    }
    // The peer has 2 already (say, resent on an earlier connection): it is skipped.
    p.on_frame(Frame::Ack { sid: A, hw: 2 }, now);
    let written = messages(&mut p);
    assert_eq!(written.len(), 1);
    assert_eq!(data_seqs(&written[0].1), vec![3]);
}

#[test]
fn a_batch_holds_at_most_max_batch_frames_acks_included() {
    let now = Instant::now();
    let mut p = synced(A, B, now);
    p.max_batch = Some(2);
    p.on_frame(data(1, "x"), now);
    p.take(B, 1, || now);
    for seq in 1..=5u8 {
        p.send(false, Bytes::from(vec![seq]), now).unwrap();
    }
    p.piggyback_ack();
    let shape: Vec<(usize, usize)> = messages(&mut p)
        .iter()
        .map(|(_, frames)| (data_seqs(frames).len(), acks(frames).len()))
        .collect();
    assert_eq!(
        shape,
        [(2, 0), (2, 0), (1, 1)],
        "the ACK is the fifth DATA's partner"
    );
    p.max_batch = Some(1);
    p.send(false, Bytes::from_static(b"z"), now).unwrap();
    p.on_frame(data(2, "y"), now);
    p.take(B, 2, || now);
    p.piggyback_ack();
    let shape: Vec<(bool, usize)> = messages(&mut p)
        .iter()
        .map(|(batch, frames)| (*batch, frames.len()))
        .collect();
    assert_eq!(shape, [(false, 1), (false, 1)], "one frame a message");
}
