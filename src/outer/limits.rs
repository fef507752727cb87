//! Who may open a connection now: `outer.max-connections` in all, and per client address
//! `outer.max-connections-per-ip` at once and `outer.connections-per-second-per-ip` new ones
//! (a token bucket with a burst of one second's worth, from the `governor` crate).
//!
//! Checked as a connection is accepted, before anything is read from it, against the address
//! the connection comes from: an IPv4 address (IPv4-mapped IPv6 included) on its own, an IPv6
//! address by its /64 prefix, since one client commonly holds a whole /64. A connection refused
//! here is answered at once (503 or 429) rather than left in the listen backlog. A connection
//! through a proxy (`outer.proxy-protocol`, or a peer in `outer.trusted-proxies`) takes its
//! place among `outer.max-connections` at accept, and is counted under its client's address
//! once the PROXY header or the request head has named it (`attribute`), never under the
//! proxy's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::handshake::HandshakeError;
use crate::config::OuterConfig;

/// The counts and buckets every accepted connection is checked against.
#[derive(Debug)]
pub struct ConnectionLimits {
    all: Arc<Semaphore>,
    max: usize,
    per_ip_max: usize,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_ip_rate: Option<(u32, DefaultKeyedRateLimiter<IpAddr>)>,
}

/// A connection's place among the limits, given back when it is dropped (with the session).
#[derive(Debug)]
pub struct ConnectionPermit {
    _all: OwnedSemaphorePermit,
    _ip: Option<IpSlot>,
}

/// One connection counted against its address.
#[derive(Debug)]
struct IpSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    pub fn new(config: &OuterConfig) -> ConnectionLimits {
        let per_ip_rate = NonZeroU32::new(config.connections_per_second_per_ip)
            .map(|rate| (rate.get(), RateLimiter::keyed(Quota::per_second(rate))));
        ConnectionLimits {
            all: Arc::new(Semaphore::new(config.max_connections)),
            max: config.max_connections,
            per_ip_max: config.max_connections_per_ip,
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            per_ip_rate,
        }
    }

    /// Connections open now, every address together.
    pub fn open(&self) -> usize {
        self.max - self.all.available_permits()
    }

    /// A place for a new connection from `ip`, or why there is none.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionPermit, HandshakeError> {
        let ip = client_key(ip);
        self.check_rate(ip)?;
        let mut permit = self.admit_unattributed()?;
        permit._ip = self.ip_slot(ip)?;
        Ok(permit)
    }

    /// A place among `outer.max-connections` alone, for a connection from a trusted proxy whose
    /// client is not known yet: counting it under the proxy's address would make the proxy
    /// itself hit the per-address limits. [`ConnectionLimits::attribute`] counts it under its
    /// client once known.
    pub fn admit_unattributed(&self) -> Result<ConnectionPermit, HandshakeError> {
        let all = Arc::clone(&self.all)
            .try_acquire_owned()
            .map_err(|_| HandshakeError::Full(self.max))?;
        Ok(ConnectionPermit {
            _all: all,
            _ip: None,
        })
    }

    /// Counts a connection admitted by [`ConnectionLimits::admit_unattributed`] under its
    /// client's address `ip`, or says which per-address limit that breaks.
    pub fn attribute(
        &self,
        permit: &mut ConnectionPermit,
        ip: IpAddr,
    ) -> Result<(), HandshakeError> {
        let ip = client_key(ip);
        self.check_rate(ip)?;
        permit._ip = self.ip_slot(ip)?;
        Ok(())
    }

    fn check_rate(&self, key: IpAddr) -> Result<(), HandshakeError> {
        match &self.per_ip_rate {
            Some((rate, limiter)) if limiter.check_key(&key).is_err() => {
                Err(HandshakeError::TooFastFromIp(describe(key), *rate))
            }
            _ => Ok(()),
        }
    }

    fn ip_slot(&self, key: IpAddr) -> Result<Option<IpSlot>, HandshakeError> {
        if self.per_ip_max == 0 {
            return Ok(None);
        }
        let mut counts = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.per_ip_max {
            return Err(HandshakeError::TooManyFromIp(
                describe(key),
                self.per_ip_max,
            ));
        }
        *n += 1;
        Ok(Some(IpSlot {
            ip: key,
            counts: Arc::clone(&self.per_ip),
        }))
    }

    /// How many addresses have a rate bucket (for tests and sizing).
    pub fn rate_buckets(&self) -> usize {
        self.per_ip_rate
            .as_ref()
            .map_or(0, |(_, limiter)| limiter.len())
    }

    /// Forgets the rate buckets of addresses that have been quiet for a while, so that the
    /// limiter's memory follows the addresses seen recently, not all ever seen.
    pub fn forget_quiet(&self) {
        if let Some((_, limiter)) = &self.per_ip_rate {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The address limits count a client under: IPv4 as is (also when IPv4-mapped), IPv6 by its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// How a client key is named in a refusal.
fn describe(key: IpAddr) -> String {
    match key {
        IpAddr::V6(prefix) => format!("{prefix}/64"),
        v4 => v4.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        assert_eq!(describe(client_key(a)), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.7".parse::<IpAddr>().unwrap());
    }
}
