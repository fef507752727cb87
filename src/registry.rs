//! The cluster registry in Redis: which node holds each (channel id, role), and which nodes are
//! alive. Only this module talks to Redis.
//!
//! Keys (one channel's keys share the hash tag `{channelId}`, so every script touches one
//! slot and the design works unchanged on Redis Cluster):
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `wspair:{ID}:app`, `wspair:{ID}:web` | route: `nodeId:sessionId`, then `:sid:gen` for a wspair.v1 client | until released (compare-and-delete), overwritten by a newer claim (compare-and-set), or [`ROUTE_TTL`] |
//! | `wspair:nodes` | sorted set of `id\|advertise\|window\|version`, scored by expiry time (ms, Redis clock) | members expire `registry.node-ttl × 3/5` after their last heartbeat; dropped an hour later |
//!
//! Liveness costs one script call per node per heartbeat (`registry.node-ttl / 5`), whatever the
//! number of sessions: routes carry no TTL that must be refreshed, they name a node id, and a
//! reader treats a route to a node missing from `wspair:nodes` as absent. A node id is drawn
//! per process, so a restarted node never revives its old routes.
//!
//! While a node is dying, readers may see its routes as live for up to `registry.node-ttl`
//! after its last heartbeat (each reader judges by time, see `crate::liveness`; the heartbeat
//! tells it how long ago every listed node beat); claims of those channels with
//! `outer.on-duplicate = "reject"` answer 409 until then, and messages sent to its sessions are
//! dropped and counted. Routes of a node that died stay in Redis until a claim overwrites them
//! or [`ROUTE_TTL`] passes; nobody treats them as live.
//!
//! Every call has the deadline `registry.timeout`. Redis Cluster is used through the client's
//! cluster connection, which follows slot moves. With `rediss://` URLs every connection is TLS
//! (rustls), trusting `registry.tls-ca` (or the system's roots) and showing `registry.tls-cert`
//! when set; a certificate Redis's name does not match, or one signed by another CA, fails
//! like an unreachable Redis, with the TLS error as the reason.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Script};

use crate::config::RegistryConfig;
use crate::node::{NodeId, NodeInfo};
use crate::pair::{ChannelId, Role};
use crate::v1::ClientId;

/// Lifetime of a route key in Redis: a bound on how long a crashed node's routes occupy memory.
/// Live sessions are re-registered well within it (every [`ROUTE_TTL`] / 2).
pub const ROUTE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long expired node entries stay in `wspair:nodes` before they are removed.
const NODE_RETAIN: Duration = Duration::from_secs(60 * 60);

const NODES_KEY: &str = "wspair:nodes";

/// A registry failure. The caller decides: a claim answers 503, a heartbeat retries.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within `registry.timeout`.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A `registry.tls-*` file could not be used.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Where a role of a channel is held: the session incarnation (node and session id) that a
/// route key names.
pub type Route = crate::node::Incarnation;

impl Route {
    /// The route's holder, `node:session`: what the compare scripts match, whatever follows.
    fn encode(&self) -> String {
        format!("{}:{}", self.node, self.session)
    }

    /// The whole value: the holder, then the client's v1 identity if it has one.
    fn encode_with(&self, client: Option<ClientId>) -> String {
        match client {
            Some(client) => format!("{}:{}", self.encode(), client.encode()),
            None => self.encode(),
        }
    }

    fn decode_with(text: &str) -> Option<(Route, Option<ClientId>)> {
        let mut parts = text.splitn(3, ':');
        let route = Route {
            node: parts.next()?.parse().ok()?,
            session: parts.next()?.parse().ok()?,
        };
        let client = match parts.next() {
            Some(rest) => Some(ClientId::decode(rest)?),
            None => None,
        };
        Some((route, client))
    }
}

/// A route and the v1 identity of its holder's client (`None`: a raw client), as a route key
/// holds them.
pub type Holder = (Route, Option<ClientId>);

/// What [`RedisRegistry::claim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The route is written; it replaced `displaced`, if any.
    Written {
        /// The route it overwrote, and that holder's v1 identity.
        displaced: Option<Holder>,
    },
    /// A newer connection of the same v1 client holds the role; nothing was written.
    Stale(Route),
    /// A live session of another node holds the role, and the policy is `reject`.
    Held(Route),
    /// The route names a node the caller holds neither live nor dead; nothing was written.
    UnknownHolder(Route),
}

/// What one heartbeat learned.
#[derive(Debug)]
pub struct Heartbeat {
    /// True if this node's entry was missing or expired: Redis lost it (restarted empty), or the
    /// node could not refresh it in time and the others may have timed it out. Everything the
    /// node holds must be registered and announced again.
    pub was_missing: bool,
    /// Every live node, this one included.
    pub live: Vec<LiveNode>,
}

/// A node the heartbeat found live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNode {
    /// Its entry.
    pub info: NodeInfo,
    /// How long before the heartbeat's reply it last refreshed its entry, by the Redis clock,
    /// reckoned with this node's `node-ttl` (zero for an entry that outlives this node's own).
    pub since_beat: Duration,
}

/// A claim in one round trip: writes this session's route unless a live session of another
/// node holds the role and the policy is `reject`, and reads the peer's route. A v1 client's
/// newer connection (same sid, higher gen) writes whatever the policy; an equal or older one
/// writes nothing.
///
/// KEYS: the route, the peer's route. ARGV: the new route (with the client's `sid:gen` for
/// v1), `reject` or `replace`, the TTL in ms, this node's id, `,id,id,` lists of the nodes the
/// caller holds as live and as dead, then the client's sid and gen (empty for a raw client).
/// Returns `{status, current route or false, peer route or false}`: status 1 written, 0
/// refused (a live holder, `reject`), 2 nothing written because the holder's node is in
/// neither list (the caller learns whether it lives, then claims again), 3 refused because the
/// holder is a newer connection of the same client.
const CLAIM: &str = r"
local current = redis.call('GET', KEYS[1])
local peer = redis.call('GET', KEYS[2])
if current then
  local node = string.match(current, '^(%x+):%d+')
  local sid, gen = string.match(current, '^%x+:%d+:(%x+):(%d+)$')
  if ARGV[7] ~= '' and sid == ARGV[7] then
    if tonumber(gen) >= tonumber(ARGV[8]) then
      return {3, current, peer}
    end
  elseif node and node ~= ARGV[4] then
    local tag = ',' .. node .. ','
    if string.find(ARGV[5], tag, 1, true) then
      if ARGV[2] == 'reject' then
        return {0, current, peer}
      end
    elseif not string.find(ARGV[6], tag, 1, true) then
      return {2, current, peer}
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return {1, current, peer}";

/// Sets a route if it is still held by the expected holder (`node:session`; empty for absent).
const COMPARE_AND_SET: &str = r"
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or (current and string.match(current, '^%x+:%d+') == ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// Deletes a route only if it is still ours (held by `node:session`).
const COMPARE_AND_DELETE: &str = r"
local current = redis.call('GET', KEYS[1])
if current and string.match(current, '^%x+:%d+') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Writes a route (ARGV[1], whole) if it is absent or already held by ARGV[3] (`node:session`):
/// registering again after a loss.
const REFRESH: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false or string.match(current, '^%x+:%d+') == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0";

/// Refreshes this node's entry and returns whether it was missing (absent, or expired so that
/// other nodes may have timed this node out), every live entry, and the milliseconds each has
/// left (its score less now), from which the caller tells how long ago it was refreshed.
const HEARTBEAT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local previous = redis.call('ZSCORE', KEYS[1], ARGV[1])
local missing = 0
if previous == false or tonumber(previous) < now then
  missing = 1
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'WITHSCORES')
local members, left = {}, {}
for i = 1, #live, 2 do
  members[#members + 1] = live[i]
  left[#left + 1] = tonumber(live[i + 1]) - now
end
return {missing, members, left}";

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Redis registry of one node.
#[derive(Clone)]
pub struct RedisRegistry {
    connection: Connection,
    me: NodeInfo,
    timeout: Duration,
    node_ttl: Duration,
    claim: Script,
    compare_and_set: Script,
    compare_and_delete: Script,
    refresh: Script,
    heartbeat: Script,
    /// Where each call's duration is observed (`wspair_registry_call_duration_seconds`).
    call_time: prometheus_client::metrics::histogram::Histogram,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

fn route_key(channel_id: &ChannelId, role: Role) -> String {
    format!("wspair:{{{channel_id}}}:{role}")
}

impl RedisRegistry {
    /// Connects to Redis (or the Redis Cluster seeds) in `config`. A single Redis is reached
    /// lazily, so a node starts while Redis is down; a cluster must answer at start, to learn
    /// its slots.
    pub async fn connect(
        config: &RegistryConfig,
        me: NodeInfo,
    ) -> Result<RedisRegistry, RegistryError> {
        // The config allows no mix of schemes: the first URL tells.
        let tls = if config.redis[0].starts_with("rediss://") {
            crate::tls::install_default_provider();
            Some(config.tls.certificates()?)
        } else {
            None
        };
        let connection = if config.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(config.redis.clone())
                .connection_timeout(config.timeout)
                .response_timeout(config.timeout)
                .retries(2);
            if let Some(certificates) = tls {
                builder = builder.certs(certificates);
            }
            let client = builder.build()?;
            let connection =
                tokio::time::timeout(config.timeout * 5, client.get_async_connection())
                    .await
                    .map_err(|_| RegistryError::Timeout(config.timeout * 5))??;
            Connection::Cluster(connection)
        } else {
            let url = config.redis[0].as_str();
            let client = match tls {
                Some(certificates) => redis::Client::build_with_tls(url, certificates)?,
                None => redis::Client::open(url)?,
            };
            let manager_config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Connection::Single(client.get_connection_manager_lazy(manager_config)?)
        };
        Ok(RedisRegistry {
            connection,
            me,
            timeout: config.timeout,
            node_ttl: config.node_ttl,
            claim: Script::new(CLAIM),
            compare_and_set: Script::new(COMPARE_AND_SET),
            compare_and_delete: Script::new(COMPARE_AND_DELETE),
            refresh: Script::new(REFRESH),
            heartbeat: Script::new(HEARTBEAT),
            call_time: prometheus_client::metrics::histogram::Histogram::new([]),
        })
    }

    /// Observes every call's duration in `histogram` from now on.
    pub fn observe_calls_in(
        mut self,
        histogram: prometheus_client::metrics::histogram::Histogram,
    ) -> RedisRegistry {
        self.call_time = histogram;
        self
    }

    /// This node's entry.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// `registry.node-ttl`: a node not seen live for this long is dead.
    pub fn node_ttl(&self) -> Duration {
        self.node_ttl
    }

    /// How long a heartbeat keeps this node's entry live.
    fn entry_lifetime(&self) -> Duration {
        self.node_ttl * 3 / 5
    }

    async fn deadline<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RegistryError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, call).await;
        self.call_time.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(result) => Ok(result?),
            Err(_) => Err(RegistryError::Timeout(self.timeout)),
        }
    }

    async fn query<T: FromRedisValue>(&self, command: Cmd) -> Result<T, RegistryError> {
        match &self.connection {
            Connection::Single(connection) => {
                self.deadline(command.query_async(&mut connection.clone()))
                    .await
            }
            Connection::Cluster(connection) => {
                self.deadline(command.query_async(&mut connection.clone()))
                    .await
            }
        }
    }

    async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[String],
    ) -> Result<T, RegistryError> {
        self.run_keys(script, &[key], args).await
    }

    async fn run_keys<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, RegistryError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        match &self.connection {
            Connection::Single(connection) => {
                self.deadline(invocation.invoke_async(&mut connection.clone()))
                    .await
            }
            Connection::Cluster(connection) => {
                self.deadline(invocation.invoke_async(&mut connection.clone()))
                    .await
            }
        }
    }

    /// Loads every script into Redis's script cache (on Redis Cluster, into every primary), so
    /// calls run them by hash in one round trip from the first.
    pub async fn load_scripts(&self) -> Result<(), RegistryError> {
        for script in [
            &self.claim,
            &self.compare_and_set,
            &self.compare_and_delete,
            &self.refresh,
            &self.heartbeat,
        ] {
            match &self.connection {
                Connection::Single(connection) => {
                    self.deadline(script.load_async(&mut connection.clone()))
                        .await?;
                }
                Connection::Cluster(connection) => {
                    self.deadline(script.load_async(&mut connection.clone()))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// The route of `role` in `channel_id`, live or not; the caller checks liveness.
    pub async fn route(
        &self,
        channel_id: &ChannelId,
        role: Role,
    ) -> Result<Option<Holder>, RegistryError> {
        let value: Option<String> = self
            .query(redis::cmd("GET").arg(route_key(channel_id, role)).clone())
            .await?;
        Ok(value.as_deref().and_then(Route::decode_with))
    }

    /// Claims `role` of `channel_id` for `mine` and reads the peer's route, in one round trip.
    /// `live` and `dead` are the other nodes the caller knows the fate of; a holder on a live
    /// node is displaced (or, with `reject`, kept), one on a dead node overwritten.
    pub async fn claim(
        &self,
        channel_id: &ChannelId,
        role: Role,
        (mine, client): Holder,
        reject: bool,
        live: &[NodeId],
        dead: &[NodeId],
    ) -> Result<(ClaimOutcome, Option<Holder>), RegistryError> {
        let list = |nodes: &[NodeId]| {
            let mut text = String::from(",");
            for node in nodes {
                text.push_str(&format!("{node},"));
            }
            text
        };
        let (status, current, peer): (i64, Option<String>, Option<String>) = self
            .run_keys(
                &self.claim,
                &[
                    &route_key(channel_id, role),
                    &route_key(channel_id, role.peer()),
                ],
                &[
                    mine.encode_with(client),
                    if reject { "reject" } else { "replace" }.to_owned(),
                    ROUTE_TTL.as_millis().to_string(),
                    self.me.id.to_string(),
                    list(live),
                    list(dead),
                    client.map_or(String::new(), |client| format!("{:016x}", client.sid)),
                    client.map_or(String::new(), |client| client.generation.to_string()),
                ],
            )
            .await?;
        let current = current.as_deref().and_then(Route::decode_with);
        let peer = peer.as_deref().and_then(Route::decode_with);
        let outcome = match (status, current) {
            (1, displaced) => ClaimOutcome::Written { displaced },
            (0, Some((holder, _))) => ClaimOutcome::Held(holder),
            (2, Some((holder, _))) => ClaimOutcome::UnknownHolder(holder),
            (3, Some((holder, _))) => ClaimOutcome::Stale(holder),
            _ => {
                return Err(RegistryError::Redis(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "claim script answered with a route it could not have read",
                ))));
            }
        };
        Ok((outcome, peer))
    }

    /// The routes of both roles of `channel_id` (app, web), read at once.
    pub async fn routes(
        &self,
        channel_id: &ChannelId,
    ) -> Result<(Option<Holder>, Option<Holder>), RegistryError> {
        let (app, web): (Option<String>, Option<String>) = self
            .query(
                redis::cmd("MGET")
                    .arg(route_key(channel_id, Role::App))
                    .arg(route_key(channel_id, Role::Web))
                    .clone(),
            )
            .await?;
        let decode = |value: Option<String>| value.as_deref().and_then(Route::decode_with);
        Ok((decode(app), decode(web)))
    }

    /// Writes `new` (held by a client with v1 identity `client`, if any) as the route if the
    /// current route is still held by `expected`.
    pub async fn compare_and_set(
        &self,
        channel_id: &ChannelId,
        role: Role,
        expected: Option<Route>,
        new: Route,
        client: Option<ClientId>,
    ) -> Result<bool, RegistryError> {
        let expected = expected.map(|route| route.encode()).unwrap_or_default();
        let ttl = ROUTE_TTL.as_millis().to_string();
        let set: i64 = self
            .run(
                &self.compare_and_set,
                &route_key(channel_id, role),
                &[expected, new.encode_with(client), ttl],
            )
            .await?;
        Ok(set == 1)
    }

    /// Deletes the route if it is still `route`; a newer claim is left alone.
    pub async fn release(
        &self,
        channel_id: &ChannelId,
        role: Role,
        route: Route,
    ) -> Result<(), RegistryError> {
        let _: i64 = self
            .run(
                &self.compare_and_delete,
                &route_key(channel_id, role),
                &[route.encode()],
            )
            .await?;
        Ok(())
    }

    /// Writes the route again (with its client's v1 identity) if it is absent or still ours;
    /// false if another node holds it.
    pub async fn refresh(
        &self,
        channel_id: &ChannelId,
        role: Role,
        route: Route,
        client: Option<ClientId>,
    ) -> Result<bool, RegistryError> {
        let ttl = ROUTE_TTL.as_millis().to_string();
        let written: i64 = self
            .run(
                &self.refresh,
                &route_key(channel_id, role),
                &[route.encode_with(client), ttl, route.encode()],
            )
            .await?;
        Ok(written == 1)
    }

    /// Refreshes this node's liveness entry and reads every live node.
    pub async fn heartbeat(&self) -> Result<Heartbeat, RegistryError> {
        let lifetime = self.entry_lifetime();
        let retain = NODE_RETAIN.as_millis().to_string();
        let (missing, members, left): (i64, Vec<String>, Vec<i64>) = self
            .run(
                &self.heartbeat,
                NODES_KEY,
                &[self.me.encode(), lifetime.as_millis().to_string(), retain],
            )
            .await?;
        Ok(Heartbeat {
            was_missing: missing == 1,
            live: members
                .iter()
                .zip(left)
                .filter_map(|(member, left)| {
                    let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                    Some(LiveNode {
                        info: NodeInfo::decode(member)?,
                        since_beat: lifetime.saturating_sub(left),
                    })
                })
                .collect(),
        })
    }

    /// Removes this node's liveness entry, at shutdown.
    pub async fn deregister(&self) -> Result<(), RegistryError> {
        let _: i64 = self
            .query(
                redis::cmd("ZREM")
                    .arg(NODES_KEY)
                    .arg(self.me.encode())
                    .clone(),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_channel_share_a_hash_tag() {
        let id: ChannelId = "abcdefghijklmnopqrstuvwxyz012345".parse().unwrap();
        assert_eq!(
            route_key(&id, Role::App),
            "wspair:{abcdefghijklmnopqrstuvwxyz012345}:app"
        );
        assert_eq!(
            route_key(&id, Role::Web),
            "wspair:{abcdefghijklmnopqrstuvwxyz012345}:web"
        );
    }

    #[test]
    fn routes_round_trip() {
        let route = Route {
            node: NodeId::from_u64(0xabc).unwrap(),
            session: 77,
        };
        assert_eq!(Route::decode_with(&route.encode()), Some((route, None)));
        let client = ClientId {
            sid: 0xab,
            generation: 9,
        };
        assert_eq!(
            Route::decode_with(&route.encode_with(Some(client))),
            Some((route, Some(client)))
        );
        assert_eq!(Route::decode_with("nonsense"), None);
    }
}
