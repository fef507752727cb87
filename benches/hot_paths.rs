//! Micro-benchmarks of the paths every relayed message or every connection takes: the inner
//! codec, query parsing, and the hub lookup a session does when its cached peer is gone.
//! Run with `cargo bench --bench hot_paths`; never run by `cargo test`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;
use wspair::config::DuplicatePolicy;
use wspair::hub::Hub;
use wspair::inner::codec::InnerCodec;
use wspair::inner::frame::InnerFrame;
use wspair::outer::handshake::parse_query;
use wspair::pair::{ChannelId, MessageKind, Role};

fn channel_id(n: usize) -> ChannelId {
    format!("bench_{n:0>26}").parse().expect("valid id")
}

fn inner_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("inner_codec");
    for size in [64usize, 4096] {
        let frame = InnerFrame::Data {
            channel_id: channel_id(1),
            role: Role::Web,
            sender: 1,
            receiver: 2,
            seq: 3,
            kind: MessageKind::Binary,
            payload: Bytes::from(vec![7u8; size]),
        };
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &frame, |b, frame| {
            let mut codec = InnerCodec::new(10_240);
            let mut buffer = BytesMut::with_capacity(64 * 1024);
            b.iter(|| {
                buffer.clear();
                codec.encode(frame.clone(), &mut buffer).expect("fits");
            });
        });
        let mut encoded = BytesMut::new();
        InnerCodec::new(10_240)
            .encode(frame.clone(), &mut encoded)
            .expect("fits");
        group.bench_with_input(BenchmarkId::new("decode", size), &encoded, |b, encoded| {
            let mut codec = InnerCodec::new(10_240);
            b.iter(|| {
                let mut buffer = encoded.clone();
                codec
                    .decode(&mut buffer)
                    .expect("valid")
                    .expect("whole frame")
            });
        });
    }
    group.finish();
}

fn query_parsing(c: &mut Criterion) {
    let query = format!("type=web&channelId={}&t=1700000000", channel_id(3));
    c.bench_function("parse_query", |b| {
        b.iter(|| parse_query(&query).expect("valid"))
    });
}

fn hub_lookup(c: &mut Criterion) {
    let hub = Arc::new(Hub::new(
        1024,
        256 * 1024,
        1024,
        wspair::credit::DEFAULT_SUPERSEDED_GRACE,
        DuplicatePolicy::Replace,
        Arc::default(),
        CancellationToken::new(),
    ));
    let mut claims = Vec::new();
    for n in 0..10_000 {
        claims.push(hub.claim(channel_id(n), Role::App, None).expect("free"));
        claims.push(hub.claim(channel_id(n), Role::Web, None).expect("free"));
    }
    let target = channel_id(4_321);
    c.bench_function("hub_peer_lookup_10k_pairs", |b| {
        b.iter(|| hub.peer(&target, Role::Web).expect("present"))
    });
}

criterion_group!(hot_paths, inner_codec, query_parsing, hub_lookup);
criterion_main!(hot_paths);
