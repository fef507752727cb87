//! wspair as a separate process of the built binary, for what only a process shows:
//! `kill -9`, the real CLI, separate address spaces.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// Log lines a process keeps for its test, at most: a test that logs more looks at the first.
const MAX_LOG_LINES: usize = 100_000;

/// A running `wspair serve` process.
pub struct ProcessNode {
    pub addr: SocketAddr,
    child: Child,
    /// Its stderr, line by line.
    log: Arc<Mutex<Vec<String>>>,
}

/// The client address in the node's `wspair listening` line, as text or JSON logs write it.
fn listening_address(line: &str) -> Option<String> {
    if let Some(rest) = line.split("wspair listening outer=").nth(1) {
        return rest.split_whitespace().next().map(str::to_owned);
    }
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    (json["message"] == "wspair listening").then(|| json["outer"].as_str().map(str::to_owned))?
}

impl ProcessNode {
    /// Starts `wspair serve` with `args` on 127.0.0.1 and a free outer port.
    pub fn start(args: &[&str]) -> ProcessNode {
        ProcessNode::start_on(0, args)
    }

    /// Starts `wspair serve` with `args` on 127.0.0.1 and outer port `port` (0: a free one),
    /// so that a node can be started again where its clients look for it.
    pub fn start_on(port: u16, args: &[&str]) -> ProcessNode {
        let port = port.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wspair"))
            .args(["serve", "--outer-ip", "127.0.0.1", "--outer-port", &port])
            .args(["--admin-port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the wspair binary starts");
        let stderr = child.stderr.take().unwrap();
        let (found_tx, found_rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&log);
        // Reads the log for the listening address, then keeps draining it so the process
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut found_tx = Some(found_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                {
                    let mut kept = kept.lock().unwrap();
                    if kept.len() < MAX_LOG_LINES {
                        kept.push(line.clone());
                    }
                }
                if let Some(addr) = listening_address(&line)
                    && let Some(tx) = found_tx.take()
                {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = found_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the node logs its listening address")
            .parse()
            .expect("a socket address");
        ProcessNode { addr, child, log }
    }

    /// The log lines written so far that contain `fragment`.
    pub fn log_lines(&self, fragment: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|line| line.contains(fragment))
            .cloned()
            .collect()
    }

    /// The process's resident set size in KiB, from `/proc/PID/status`.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/status: {err}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The resident set size once it has not grown for `quiet`, within `limit`: what the
    /// node holds after a load has stopped moving.
    pub async fn settled_rss_kib(&self, quiet: Duration, limit: Duration) -> u64 {
        let deadline = std::time::Instant::now() + limit;
        let mut last = self.rss_kib();
        let mut since = std::time::Instant::now();
        while std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.rss_kib();
            if now > last {
                last = now;
                since = std::time::Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        last
    }

    /// `kill -9`: no shutdown, no deregistration.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process stops running (its sockets stay open, nothing answers), as a
    /// node does in a long GC pause, a frozen VM or a stopped container. Returns once every
    /// thread has stopped: a thread running on another CPU stops only on its way back from
    /// the kernel, after `kill` has returned.
    pub fn pause(&self) {
        self.signal("STOP");
        let pid = self.child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !self.stopped() {
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} did not stop after SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether every thread of the process is stopped (state `T` in `/proc/PID/task/*/stat`).
    fn stopped(&self) -> bool {
        let pid = self.child.id();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.map_while(Result::ok).all(|task| {
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                // The state follows the command name, which is in parentheses.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
        })
    }

    /// SIGCONT: a paused process runs again.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// SIGTERM, as an orchestrator stops a node: waits for the process to exit, within
    /// `limit` (failing the test otherwise), and returns its exit status.
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited for") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the node did not exit within {limit:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends SIGHUP (reload the TLS certificate).
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// A counter from `/healthz`.
    pub async fn counter(&self, name: &str) -> u64 {
        let response = super::http::request(self.addr, "GET", "/healthz", "").await;
        let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        body["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// The upgrade URL for `role` and `channel_id`.
    pub fn url(&self, role: wspair::Role, channel_id: &wspair::ChannelId) -> String {
        format!(
            "ws://{}/channel?type={role}&channelId={channel_id}",
            self.addr
        )
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
