//! A TCP proxy the test can cut: stands between one node and Redis, so that one node alone
//! loses Redis while the others keep it. It can also blackhole: stop carrying bytes while
//! keeping every connection open, as a network whose packets vanish does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A running proxy to `target`.
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    /// Whether bytes flow (false while blackholed).
    flowing: Arc<watch::Sender<bool>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let flowing = Arc::new(watch::channel(true).0);
        let (open_loop, cut_loop, flowing_loop) =
            (Arc::clone(&open), Arc::clone(&cut), Arc::clone(&flowing));
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !open_loop.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused in effect
                }
                let token = cut_loop.lock().unwrap().clone();
                let mut flow = flowing_loop.subscribe();
                tokio::spawn(async move {
                    if !*flow.borrow_and_update() {
                        // Opened while blackholed: its packets never reached the target, so
                        // the connection never existed there. The client hangs until it gives
                        // up; when the flow returns the connection is dropped.
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = until(&mut flow, true) => {}
                        }
                        return;
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = async {
                            tokio::join!(
                                pump(client_read, server_write, flow.clone()),
                                pump(server_read, client_write, flow),
                            )
                        } => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            open,
            cut,
            flowing,
        }
    }

    /// Cuts every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let mut token = self.cut.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Blackholes: no byte is carried either way, and nothing is closed. Open connections
    /// hang, their bytes waiting in the kernels' buffers as unacknowledged segments wait for
    /// retransmission; new connections are accepted (the test cannot refuse a SYN it never
    /// sees) but never reach the target.
    pub fn blackhole(&self) {
        self.flowing.send_replace(false);
    }

    /// Ends a blackhole: connections opened before it carry their waiting bytes on, as TCP
    /// does once the path is back; those opened during it are dropped.
    pub fn restore_flow(&self) {
        self.flowing.send_replace(true);
    }
}

/// Waits until the flow is `state`; false if the proxy is gone.
async fn until(flow: &mut watch::Receiver<bool>, state: bool) -> bool {
    flow.wait_for(|flowing| *flowing == state).await.is_ok()
}

/// Carries bytes from `from` to `to` while the flow is on; at the end of `from`, shuts `to`
/// down for writing.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut flow: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !until(&mut flow, true).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            // Blackholed while waiting: stop reading, so the bytes stay in the kernel.
            _ = until(&mut flow, false) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Bytes read as the blackhole began go on once it ends.
        if !until(&mut flow, true).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}
