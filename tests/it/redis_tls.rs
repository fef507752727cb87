//! The registry over TLS (`rediss://`, `registry.tls-*`) against a real `redis-server` that speaks
//! only TLS: a two-node cluster with a password and an ACL user relaying across nodes, a Redis
//! certificate from another CA (the node stays up and answers 503 with the TLS error, as for a
//! wrong password), a Redis that requires client certificates, a Redis Cluster over TLS, and
//! bad settings named by key.

use std::path::Path;

use wspair::tls::registry::RegistryTls;

use crate::harness::ca::{TestCa, scratch_dir};
use crate::harness::http::{UPGRADE_HEADERS, request};
use crate::harness::redis::{RedisCluster, RedisServer, RedisTls};
use crate::harness::{TestNode, random_channel_id, relays_across};

/// Trusting `ca` (a root PEM file), with no client certificate.
fn trusting(ca: &Path) -> RegistryTls {
    RegistryTls {
        ca: Some(ca.to_owned()),
        client: None,
    }
}

/// Starts a node on `url` with `tls`.
async fn node(url: &str, tls: RegistryTls) -> TestNode {
    TestNode::start_in_cluster(vec![url.to_owned()], |config| config.registry.tls = tls).await
}

/// An upgrade on `node` is refused with 503; returns the reason.
async fn refused_with_503(node: &TestNode) -> String {
    let target = format!("/channel?type=app&channelId={}", random_channel_id());
    let refused = request(node.addr, "GET", &target, UPGRADE_HEADERS).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    refused.body
}

#[tokio::test]
async fn two_nodes_over_rediss_with_an_acl_user_and_a_password_relay_across_nodes() {
    let dir = scratch_dir("redis-acl");
    let ca = TestCa::new();
    let redis = RedisServer::start_tls(RedisTls::issue(&ca, &dir, false));
    redis.lock_down();
    let tls = trusting(&redis.tls().unwrap().ca);
    // One node as the ACL user, the other as the default user with requirepass.
    let user = format!("rediss://wspair:relay-s3cret@127.0.0.1:{}/", redis.port);
    let default = format!("rediss://:admin-s3cret@127.0.0.1:{}/", redis.port);
    let node_a = node(&user, tls.clone()).await;
    let node_b = node(&default, tls).await;
    relays_across(&node_a, &node_b, "through a registry over TLS").await;
    relays_across(&node_b, &node_a, "the other way round").await;
    // The routes are in Redis: it was the registry.
    let keys = redis
        .cli(&[
            "--user",
            "wspair",
            "--pass",
            "relay-s3cret",
            "KEYS",
            "wspair:*",
        ])
        .unwrap();
    assert!(keys.contains("wspair:nodes"), "{keys}");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn a_redis_certificate_from_another_ca_leaves_the_node_up_answering_503_with_the_tls_error() {
    let dir = scratch_dir("redis-other-ca");
    let redis = RedisServer::start_tls(RedisTls::issue(&TestCa::new(), &dir, false));
    let stranger = TestCa::new().write_root(&dir, "stranger-");
    let node = node(&redis.url(), trusting(&stranger)).await;
    let reason = refused_with_503(&node).await;
    assert!(
        reason.starts_with("registry unavailable: ") && reason.contains("invalid peer certificate"),
        "{reason}"
    );
    // Nothing reached Redis as this node: it never trusted it.
    let nodes = redis.cli(&["ZCARD", "wspair:nodes"]).unwrap();
    assert_eq!(nodes.trim(), "0");
    node.shutdown().await;
}

#[tokio::test]
async fn a_redis_that_requires_client_certificates_takes_a_node_that_shows_one() {
    let dir = scratch_dir("redis-mtls");
    let ca = TestCa::new();
    let redis = RedisServer::start_tls(RedisTls::issue(&ca, &dir, true));
    let files = redis.tls().unwrap().clone();
    let with_certificate = RegistryTls {
        ca: Some(files.ca.clone()),
        client: Some(ca.issue_as(&dir, "node-")),
    };
    let node_a = node(&redis.url(), with_certificate.clone()).await;
    let node_b = node(&redis.url(), with_certificate).await;
    relays_across(&node_a, &node_b, "a node with a client certificate").await;

    // Without one, Redis ends the handshake: the node is up and says why it cannot serve.
    let without = node(&redis.url(), trusting(&files.ca)).await;
    let reason = refused_with_503(&without).await;
    // "received fatal alert: CertificateRequired"
    assert!(
        reason.starts_with("registry unavailable: ") && reason.contains("Certificate"),
        "{reason}"
    );
    without.shutdown().await;
    relays_across(&node_b, &node_a, "the others are untouched").await;
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn a_redis_cluster_over_tls_works_as_the_registry() {
    let dir = scratch_dir("redis-cluster");
    let files = RedisTls::issue(&TestCa::new(), &dir, false);
    let tls = trusting(&files.ca);
    let redis = RedisCluster::start_tls(Some(files));
    let start = || {
        TestNode::start_in_cluster(redis.urls(), |config| {
            config.registry.tls = tls.clone();
        })
    };
    let node_a = start().await;
    let node_b = start().await;
    // Channel ids hash to slots on every master.
    for _ in 0..10 {
        relays_across(&node_a, &node_b, "through a redis cluster over TLS").await;
    }
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[test]
fn bad_registry_tls_settings_name_the_key() {
    let dir = scratch_dir("redis-bad");
    let ca = TestCa::new();
    let root = ca.write_root(&dir, "");
    let client = ca.issue(&dir);
    let missing = dir.join("missing.pem").display().to_string();
    let path = |path: &Path| path.display().to_string();
    let load = |url: &str, settings: &[(&str, String)]| {
        let mut overrides = vec![
            ("registry.redis", url.to_owned()),
            ("inner.secret", crate::harness::SECRET.to_owned()),
            ("inner.advertise", "127.0.0.1:1025".to_owned()),
        ];
        overrides.extend(settings.iter().cloned());
        wspair::Config::load(None, &overrides)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let tls = "rediss://127.0.0.1:6379";
    let all = [
        ("registry.tls-ca", path(&root)),
        ("registry.tls-cert", path(&client.cert)),
        ("registry.tls-key", path(&client.key)),
    ];
    assert_eq!(load(tls, &all), Ok(()));
    assert_eq!(
        load(tls, &[]),
        Ok(()),
        "system roots, no client certificate"
    );
    let err = load(tls, &[("registry.tls-ca", missing.clone())]).unwrap_err();
    assert!(err.starts_with("registry.tls-ca: "), "{err}");
    let err = load(tls, &[("registry.tls-ca", path(&client.key))]).unwrap_err();
    assert!(err.starts_with("registry.tls-ca: "), "{err}");
    let err = load(tls, &[all[1].clone()]).unwrap_err();
    assert_eq!(err, "registry.tls-key: must be set with registry.tls-cert");
    let err = load(tls, &[all[1].clone(), ("registry.tls-key", missing)]).unwrap_err();
    assert!(err.starts_with("registry.tls-key: "), "{err}");
    let other_key = ca.issue_as(&dir, "other-").key;
    let err = load(
        tls,
        &[all[1].clone(), ("registry.tls-key", path(&other_key))],
    )
    .unwrap_err();
    assert!(err.starts_with("registry.tls-key: does not fit"), "{err}");
    // TLS files for a plaintext Redis are a mistake, not something to ignore.
    let err = load("redis://127.0.0.1:6379", &[all[0].clone()]).unwrap_err();
    assert!(err.starts_with("registry.tls-ca: is set, but"), "{err}");
    let err = load("rediss://a:1,redis://b:2", &[]).unwrap_err();
    assert!(err.starts_with("registry.redis: mixes"), "{err}");
}
