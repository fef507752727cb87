//! Accepting connections on a listener until the node shuts down, the one way all three
//! listeners (client, inner, admin) do it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a listener pauses after a failed accept.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(50);

/// The next connection on `listener`, or `None` once `shutdown` fires. A failed accept is
/// logged (throttled: a storm of them writes a line per 10 s) and followed by a short pause:
/// running out of file descriptors is the usual cause, and pausing lets closing connections
/// free some instead of spinning.
pub async fn next(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &'static str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(err) => {
                    crate::warn_throttled!(error = %err, listener = what, "accept failed");
                    tokio::time::sleep(PAUSE_AFTER_ERROR).await;
                }
            },
        }
    }
}
