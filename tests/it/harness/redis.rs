//! Real `redis-server` processes on free loopback ports, stopped on drop; plaintext, or TLS only
//! (`--port 0 --tls-port P`, Debian's redis-server has TLS built in) with certificates from a
//! test CA.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wspair::tls::TlsFiles;

use crate::harness::ca::TestCa;

const INSTALL_HINT: &str = "redis-server not found or not starting: install it (Debian: apt-get install redis-server), or run `bash scripts/test.sh`, which does";

/// One `redis-server` process.
pub struct RedisServer {
    /// Its port: the TLS port of a TLS server, which has no plaintext one.
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
    dir: std::path::PathBuf,
    tls: Option<RedisTls>,
}

/// The files of a TLS Redis, all issued by one test CA.
#[derive(Clone)]
pub struct RedisTls {
    /// The CA's root: what Redis trusts for client certificates, and clients for Redis's.
    pub ca: PathBuf,
    /// Redis's own certificate (for 127.0.0.1) and key.
    pub server: TlsFiles,
    /// A client certificate of the same CA; `redis-cli` shows it.
    pub client: TlsFiles,
    /// `--tls-auth-clients yes`: a client without a certificate is refused.
    pub require_client_certificates: bool,
}

impl RedisTls {
    /// Issues Redis's and a client's certificates from `ca` into `dir`.
    pub fn issue(ca: &TestCa, dir: &Path, require_client_certificates: bool) -> RedisTls {
        RedisTls {
            ca: ca.write_root(dir, "redis-"),
            server: ca.issue_as(dir, "redis-server-"),
            client: ca.issue_as(dir, "redis-client-"),
            require_client_certificates,
        }
    }

    /// `redis-cli`'s arguments for this server.
    fn cli_args(&self) -> Vec<String> {
        let path = |path: &Path| path.display().to_string();
        vec![
            "--tls".into(),
            "--cacert".into(),
            path(&self.ca),
            "--cert".into(),
            path(&self.client.cert),
            "--key".into(),
            path(&self.client.key),
        ]
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a plain Redis with no persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts Redis with `extra_args`, retrying on another port if the first one was taken.
    pub fn start_with(extra_args: &[&str]) -> RedisServer {
        RedisServer::start_tls_with(None, extra_args)
    }

    /// Starts a Redis that speaks only TLS, with `tls`'s files.
    pub fn start_tls(tls: RedisTls) -> RedisServer {
        RedisServer::start_tls_with(Some(tls), &[])
    }

    /// Starts Redis with `extra_args`, over TLS only when `tls` is given; fails loudly if it
    /// cannot, never skips.
    pub fn start_tls_with(tls: Option<RedisTls>, extra_args: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "wspair-redis-{}",
            crate::harness::random_channel_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut last_log = String::new();
        for _ in 0..5 {
            // A failed attempt's drop removed it.
            std::fs::create_dir_all(&dir).unwrap();
            let mut server = RedisServer {
                port: free_port(),
                child: None,
                extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
                dir: dir.clone(),
                tls: tls.clone(),
            };
            if server.spawn() {
                return server;
            }
            last_log = std::fs::read_to_string(server.log()).unwrap_or_default();
        }
        panic!("{INSTALL_HINT}; its last log:\n{last_log}");
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Where the server logs (what it says when it does not start).
    fn log(&self) -> PathBuf {
        self.dir.join(format!("redis-{}.log", self.port))
    }

    /// The server's TLS files, if it speaks TLS.
    pub fn tls(&self) -> Option<&RedisTls> {
        self.tls.as_ref()
    }

    /// The listening arguments: the port, or the TLS port and its files.
    fn listen_args(&self) -> Vec<String> {
        let port = self.port.to_string();
        let Some(tls) = &self.tls else {
            return vec!["--port".into(), port];
        };
        let path = |path: &Path| path.display().to_string();
        let auth_clients = if tls.require_client_certificates {
            "yes"
        } else {
            "no"
        };
        [
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            &path(&tls.server.cert),
            "--tls-key-file",
            &path(&tls.server.key),
            "--tls-ca-cert-file",
            &path(&tls.ca),
            "--tls-auth-clients",
            auth_clients,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(self.listen_args())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .args(["--logfile", &self.log().display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("{INSTALL_HINT}: {err}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self
                .cli(&["PING"])
                .is_some_and(|reply| reply.trim() == "PONG")
            {
                return true;
            }
            if let Some(child) = self.child.as_mut()
                && child.try_wait().unwrap().is_some()
            {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    /// Runs `redis-cli` against this server; `None` if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(self.tls.iter().flat_map(RedisTls::cli_args))
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Kills the server (its data is lost: no persistence).
    /// Adds the ACL user `wspair` (password `relay-s3cret`) and gives the default user the
    /// password `admin-s3cret`: from then on nothing gets in anonymously.
    pub fn lock_down(&self) {
        self.cli(&[
            "ACL",
            "SETUSER",
            "wspair",
            "on",
            ">relay-s3cret",
            "~*",
            "&*",
            "+@all",
        ])
        .expect("the ACL user is created");
        self.cli(&["CONFIG", "SET", "requirepass", "admin-s3cret"])
            .expect("requirepass is set");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Calls of every command so far, from one read of `INFO commandstats`.
    pub fn calls(&self) -> std::collections::HashMap<String, u64> {
        let stats = self.cli(&["INFO", "commandstats"]).unwrap_or_default();
        stats
            .lines()
            .filter_map(|line| line.strip_prefix("cmdstat_"))
            .filter_map(|rest| {
                let (command, fields) = rest.split_once(':')?;
                let calls = fields
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((command.to_owned(), calls))
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three Redis Cluster masters on loopback, joined with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_tls(None)
    }

    /// Three masters that speak TLS only (to clients and on the cluster bus) when `tls` is
    /// given.
    pub fn start_tls(tls: Option<RedisTls>) -> RedisCluster {
        let mut args = vec!["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"];
        if tls.is_some() {
            args.extend(["--tls-cluster", "yes"]);
        }
        let masters: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_tls_with(tls.clone(), &args))
            .collect();
        let addrs: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-yes")
            .args(tls.iter().flat_map(RedisTls::cli_args))
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        // Every master must see the whole cluster before a client asks one of them for the slot
        // map: the first master agreeing is not enough (the others learn by gossip).
        let deadline = Instant::now() + Duration::from_secs(20);
        for master in &masters {
            loop {
                let info = master.cli(&["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains("cluster_known_nodes:3")
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "master {} never saw the whole cluster: {info}",
                    master.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { masters }
    }

    /// The seed list for `registry.redis`.
    pub fn urls(&self) -> Vec<String> {
        self.masters.iter().map(RedisServer::url).collect()
    }
}
