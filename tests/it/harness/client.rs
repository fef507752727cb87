//! A WebSocket client for tests, on tokio-tungstenite.

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::EVENT_TIMEOUT;

/// One connected client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code and reason.
    Close(u16, String),
    /// The connection ended without a close frame.
    NoCloseFrame,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _response) =
            // Nagle off, as on the server: a test that times messages must not measure the
            // client's own delayed-ACK wait.
            tokio::time::timeout(
                EVENT_TIMEOUT,
                tokio_tungstenite::connect_async_with_config(url, None, true),
            )
                .await
                .expect("upgrade completes in time")
                .unwrap_or_else(|err| panic!("upgrade to {url} failed: {err}"));
        Client { ws }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send text");
    }

    pub async fn send_binary(&mut self, payload: &[u8]) {
        self.ws
            .send(Message::binary(Bytes::copy_from_slice(payload)))
            .await
            .expect("send binary");
    }

    /// The next text or binary message; pings and pongs are skipped.
    pub async fn recv(&mut self) -> Message {
        loop {
            let next = tokio::time::timeout(EVENT_TIMEOUT, self.ws.next())
                .await
                .expect("a message arrives in time")
                .expect("connection still open")
                .expect("message reads cleanly");
            match next {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Message::Text(text) => text.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    pub async fn recv_binary(&mut self) -> Vec<u8> {
        match self.recv().await {
            Message::Binary(payload) => payload.to_vec(),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    /// Reads until the connection ends, skipping data messages, and reports how.
    pub async fn ending(&mut self) -> Ending {
        loop {
            let next = tokio::time::timeout(EVENT_TIMEOUT, self.ws.next())
                .await
                .expect("the connection ends in time");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ending::Close(u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return Ending::Close(1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ending::NoCloseFrame,
            }
        }
    }

    /// Reads until the connection ends and returns the close code, failing without one.
    pub async fn close_code(&mut self) -> u16 {
        match self.ending().await {
            Ending::Close(code, _) => code,
            Ending::NoCloseFrame => panic!("connection ended without a close frame"),
        }
    }

    pub async fn close(mut self) {
        self.ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await
            .expect("close");
        // Wait for the server's echo so the close is complete on both sides.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(EVENT_TIMEOUT, self.ws.next()).await {}
    }
}

/// Sends `n` numbered text messages each way at once and checks each side receives the
/// other's, complete and in order.
pub async fn exchange(app: Client, web: Client, n: usize) -> (Client, Client) {
    async fn run(client: Client, tag: &'static str, peer_tag: &'static str, n: usize) -> Client {
        let (mut sink, mut stream) = client.ws.split();
        let sender = tokio::spawn(async move {
            for i in 0..n {
                sink.feed(Message::text(format!("{tag}-{i}")))
                    .await
                    .unwrap();
            }
            sink.flush().await.unwrap();
            sink
        });
        let mut received = 0;
        while received < n {
            let message = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("{tag}: message {received} of {n} did not arrive in time")
                })
                .expect("open")
                .expect("clean");
            if let Message::Text(text) = message {
                assert_eq!(text.as_str(), format!("{peer_tag}-{received}"));
                received += 1;
            }
        }
        let sink = sender.await.unwrap();
        Client {
            ws: sink.reunite(stream).unwrap(),
        }
    }
    tokio::join!(run(app, "app", "web", n), run(web, "web", "app", n))
}

/// The write half of a client that is made to send as fast as it can.
pub type Sink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<MaybeTlsStream<TcpStream>>,
    Message,
>;

/// Sends `payload` until one send cannot finish within `patience` (the relay stopped reading
/// from this client), and returns how many went through; fails if that never happens.
pub async fn send_until_throttled(
    sink: &mut Sink,
    payload: &Bytes,
    patience: std::time::Duration,
) -> usize {
    let mut sent = 0usize;
    loop {
        let send = sink.send(Message::binary(payload.clone()));
        match tokio::time::timeout(patience, send).await {
            Ok(result) => {
                result.expect("send");
                sent += 1;
            }
            Err(_) => return sent,
        }
        assert!(sent < 20_000, "the sender was never throttled");
    }
}
