//! `wspair client` as users run it: the built binary as a child process, against a node in
//! this process, with stdin, stdout, stderr and the exit code checked.
//!
//! Every wait is for a line or an exit, bounded by `EVENT_TIMEOUT`, never a sleep: a client
//! sends only after the `# connected` (or `# presence online`) notes say its peer is there.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use wspair::Role;

use crate::harness::{Client, EVENT_TIMEOUT, TestNode, random_channel_id};

/// A running `wspair client`, its stdout and stderr read line by line as they come.
struct CliClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    /// Every stderr line read so far, for failure messages and final checks.
    stderr_seen: Vec<String>,
}

/// How a `wspair client` process ended.
struct Ended {
    code: i32,
    stderr: String,
}

fn lines_of(
    reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (lines_tx, lines_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    lines_rx
}

impl CliClient {
    /// Starts `wspair client` with `args`; stdin stays open until `end_input`.
    fn start(args: &[&str]) -> CliClient {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wspair"))
            .arg("client")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the wspair binary starts");
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        CliClient {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// Starts `wspair client` with `args` and `input` as the whole of its stdin.
    async fn start_with_input(args: &[&str], input: &str) -> CliClient {
        let mut client = CliClient::start(args);
        let mut stdin = client.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        client
    }

    async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes stdin and waits for the process to end.
    async fn finish(mut self) -> Ended {
        self.stdin = None;
        self.ended().await
    }

    /// The next line on stdout.
    async fn next_line(&mut self) -> String {
        match tokio::time::timeout(EVENT_TIMEOUT, self.stdout.recv()).await {
            Ok(Some(line)) => line,
            _ => panic!("no line on stdout; stderr: {:?}", self.stderr_seen),
        }
    }

    /// Reads stderr up to a line containing `fragment`, and returns it.
    async fn wait_note(&mut self, fragment: &str) -> String {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.stderr.recv()).await {
                Ok(Some(line)) => {
                    self.stderr_seen.push(line.clone());
                    if line.contains(fragment) {
                        return line;
                    }
                }
                _ => panic!("no {fragment:?} on stderr; got {:?}", self.stderr_seen),
            }
        }
    }

    /// Waits for the process to end, stdin still open, and returns its code and all of its
    /// stderr.
    async fn ended(mut self) -> Ended {
        let status = tokio::time::timeout(EVENT_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("wspair client ends in time; {:?}", self.stderr_seen))
            .unwrap();
        while let Ok(Some(line)) = tokio::time::timeout(EVENT_TIMEOUT, self.stderr.recv()).await {
            self.stderr_seen.push(line);
        }
        Ended {
            code: status.code().expect("exited, not killed"),
            stderr: self.stderr_seen.join("\n"),
        }
    }
}

#[tokio::test]
async fn two_raw_clients_exchange_lines_both_ways() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut app = CliClient::start(&[&node.url(Role::App, id.as_str())]);
    // The base URL and flags build the same upgrade URL.
    let base = format!("ws://{}", node.addr);
    let mut web = CliClient::start(&["--url", &base, "--channel", id.as_str(), "--role", "web"]);
    app.wait_note("# connected").await;
    web.wait_note("# connected").await;
    app.send_line("hello from app").await;
    assert_eq!(web.next_line().await, "hello from app");
    web.send_line("hello from web").await;
    assert_eq!(app.next_line().await, "hello from web");
    app.send_line("and again").await;
    assert_eq!(web.next_line().await, "and again");
    assert_eq!(app.finish().await.code, 0);
    assert_eq!(web.finish().await.code, 0);
}

#[tokio::test]
async fn once_prints_the_peer_reply_and_exits_0() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut peer = node.connect(Role::Web, &id).await;
    let app_url = node.url(Role::App, id.as_str());
    let mut app = CliClient::start_with_input(&[&app_url, "--once"], "hi\n").await;
    assert_eq!(peer.recv_text().await, "hi");
    peer.send_text("hello back").await;
    assert_eq!(app.next_line().await, "hello back");
    assert_eq!(app.finish().await.code, 0);
}

#[tokio::test]
async fn once_without_a_message_exits_with_the_timeout_code() {
    let node = TestNode::start(|_| {}).await;
    let url = node.url(Role::App, random_channel_id().as_str());
    let app = CliClient::start_with_input(&[&url, "--once", "--timeout", "300ms"], "hi\n").await;
    let ended = app.ended().await;
    assert_eq!(ended.code, 5, "{}", ended.stderr);
    assert!(
        ended.stderr.contains("no message within"),
        "{}",
        ended.stderr
    );
}

#[tokio::test]
async fn binary_messages_print_as_hex_or_base64_and_lines_go_as_binary() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut peer = node.connect(Role::Web, &id).await;
    let url = node.url(Role::App, id.as_str());
    let mut hex = CliClient::start(&[&url, "--send-hex"]);
    hex.wait_note("# connected").await;
    peer.send_binary(&[0x00, 0x01, 0xfe, 0xff]).await;
    assert_eq!(hex.next_line().await, "0001feff");
    hex.send_line("00 01 fe ff").await;
    assert_eq!(peer.recv_binary().await, [0x00, 0x01, 0xfe, 0xff]);
    assert_eq!(hex.finish().await.code, 0);

    let mut base64 = CliClient::start(&[&url, "--binary", "--base64"]);
    base64.wait_note("# connected").await;
    peer.send_binary(&[0x00, 0x01, 0xfe, 0xff]).await;
    assert_eq!(base64.next_line().await, "AAH+/w==");
    peer.send_text("text stays text").await;
    assert_eq!(base64.next_line().await, "text stays text");
    base64.send_line("raw bytes").await;
    assert_eq!(peer.recv_binary().await, b"raw bytes");
    assert_eq!(base64.finish().await.code, 0);
}

#[tokio::test]
async fn a_v1_pair_reports_presence_and_acks() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut app = CliClient::start(&["--v1", &node.url(Role::App, id.as_str())]);
    let mut web = CliClient::start(&["--v1", &node.url(Role::Web, id.as_str())]);
    app.wait_note("# connected gen=1").await;
    app.wait_note("# presence online").await;
    web.wait_note("# presence online").await;
    app.send_line("one").await;
    assert_eq!(web.next_line().await, "one");
    app.wait_note("# acked 1").await;
    web.send_line("two").await;
    assert_eq!(app.next_line().await, "two");
    web.wait_note("# acked 1").await;
    // The end of stdin waits for the acks, then leaves with bye: the peer sees it go.
    app.send_line("three").await;
    let app = app.finish().await;
    assert_eq!(app.code, 0, "{}", app.stderr);
    assert!(app.stderr.contains("# acked 2"), "{}", app.stderr);
    assert_eq!(web.next_line().await, "three");
    web.wait_note("# presence offline (left)").await;
    assert_eq!(web.finish().await.code, 0);
}

#[tokio::test]
async fn a_v1_once_exits_when_what_it_sent_is_acknowledged() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut web = CliClient::start(&["--v1", &node.url(Role::Web, id.as_str())]);
    web.wait_note("# connected").await;
    // Sent before the peer is there: the library keeps it until the peer takes it.
    let app_url = node.url(Role::App, id.as_str());
    let app = CliClient::start_with_input(&["--v1", "--once", &app_url], "queued\n").await;
    assert_eq!(web.next_line().await, "queued");
    let app = app.ended().await;
    assert_eq!(app.code, 0, "{}", app.stderr);
    assert!(app.stderr.contains("# acked 1"), "{}", app.stderr);
}

#[tokio::test]
async fn a_bad_channel_id_is_refused_with_the_status_and_reason() {
    let node = TestNode::start(|_| {}).await;
    let url = format!("ws://{}/channel?type=app&channelId=short", node.addr);
    for mode in [None, Some("--v1")] {
        let args: Vec<&str> = mode.into_iter().chain([url.as_str()]).collect();
        let ended = CliClient::start_with_input(&args, "").await.ended().await;
        assert_eq!(ended.code, 2, "{mode:?}: {}", ended.stderr);
        assert!(
            ended
                .stderr
                .contains("refused: HTTP 400: query parameter `channelId` must be 32"),
            "{mode:?}: {}",
            ended.stderr
        );
    }
}

#[tokio::test]
async fn a_replaced_client_exits_with_the_closed_code_and_4001() {
    let node = TestNode::start(|_| {}).await;
    for mode in [None, Some("--v1")] {
        let id = random_channel_id();
        let url = node.url(Role::App, id.as_str());
        let args: Vec<&str> = mode.into_iter().chain([url.as_str()]).collect();
        let mut app = CliClient::start(&args);
        app.wait_note("# connected").await;
        let _newer = Client::connect(&url).await;
        let ended = app.ended().await;
        assert_eq!(ended.code, 3, "{mode:?}: {}", ended.stderr);
        assert!(
            ended
                .stderr
                .contains("closed by the server: 4001 replaced by a newer connection"),
            "{mode:?}: {}",
            ended.stderr
        );
    }
}

#[tokio::test]
async fn node_shutdown_exits_with_the_closed_code_and_1001() {
    let node = TestNode::start(|_| {}).await;
    let mut app = CliClient::start(&[&node.url(Role::App, random_channel_id().as_str())]);
    app.wait_note("# connected").await;
    node.shutdown().await;
    let ended = app.ended().await;
    assert_eq!(ended.code, 3, "{}", ended.stderr);
    assert!(
        ended
            .stderr
            .contains("closed by the server: 1001 server shutting down"),
        "{}",
        ended.stderr
    );
}

#[tokio::test]
async fn no_server_and_bad_usage_have_their_own_codes() {
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!(
        "ws://{free_port}/channel?type=app&channelId={}",
        random_channel_id()
    );
    let ended = CliClient::start_with_input(&[&url], "").await.ended().await;
    assert_eq!(ended.code, 4, "{}", ended.stderr);
    assert!(ended.stderr.contains("cannot connect"), "{}", ended.stderr);

    let ended = CliClient::start(&["ws://127.0.0.1:1/channel?type=app"])
        .ended()
        .await;
    assert_eq!(ended.code, 64, "{}", ended.stderr);
    assert!(ended.stderr.contains("no channel id"), "{}", ended.stderr);
    let ended = CliClient::start(&["--once", "--no-close", "ws://h"])
        .ended()
        .await;
    assert_eq!(ended.code, 64, "{}", ended.stderr);
}
