//! wspair as a separate process of the built binary, for what only a process shows:
//! `kill -9`, the real CLI, separate address spaces.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `wspair serve` process.
pub struct ProcessNode {
    pub addr: SocketAddr,
    child: Child,
}

impl ProcessNode {
    /// Starts `wspair serve` with `args` on 127.0.0.1 and a free outer port.
    pub fn start(args: &[&str]) -> ProcessNode {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wspair"))
            .args(["serve", "--outer-ip", "127.0.0.1", "--outer-port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the wspair binary starts");
        let stderr = child.stderr.take().unwrap();
        let (found_tx, found_rx) = mpsc::channel();
        // Reads the log for the listening address, then keeps draining it so the process
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut found_tx = Some(found_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("wspair listening outer=").nth(1)
                    && let Some(tx) = found_tx.take()
                {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = found_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the node logs its listening address")
            .parse()
            .expect("a socket address");
        ProcessNode { addr, child }
    }

    /// The process id, to read the node's memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no shutdown, no deregistration.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
