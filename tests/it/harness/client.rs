//! A WebSocket client for tests, on tokio-tungstenite.

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
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

    /// As [`Client::connect`], over a socket whose kernel buffers are fixed (SO_RCVBUF,
    /// SO_SNDBUF, which turn the kernel's autotuning off) where given: a client on a slow
    /// link, whose unread messages soon push back on the server, or whose own sends wait as
    /// soon as the server stops reading.
    pub async fn connect_with_socket_buffers(
        url: &str,
        recv_buffer: Option<u32>,
        send_buffer: Option<u32>,
    ) -> Client {
        Client::try_connect_with_socket_buffers(url, recv_buffer, send_buffer)
            .await
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// As [`Client::connect_with_socket_buffers`], but a failure is an error, not a panic.
    pub async fn try_connect_with_socket_buffers(
        url: &str,
        recv_buffer: Option<u32>,
        send_buffer: Option<u32>,
    ) -> Result<Client, String> {
        let request = url.into_client_request().expect("a WebSocket URL");
        let authority = request.uri().authority().expect("a host and port").as_str();
        let addr = tokio::net::lookup_host(authority)
            .await
            .expect("the host resolves")
            .next()
            .expect("an address");
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("a socket");
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        }
        if let Some(bytes) = send_buffer {
            socket.set_send_buffer_size(bytes).expect("SO_SNDBUF");
        }
        let upgrade = async {
            let stream = socket
                .connect(addr)
                .await
                .map_err(|err| format!("connect to {addr} failed: {err}"))?;
            stream.set_nodelay(true).expect("TCP_NODELAY");
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
                .await
                .map_err(|err| format!("upgrade to {url} failed: {err}"))
        };
        match tokio::time::timeout(EVENT_TIMEOUT, upgrade).await {
            Ok(Ok((ws, _response))) => Ok(Client { ws }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(format!("upgrade to {url} did not complete in time")),
        }
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
    send_numbered_until_throttled(sink, |_| payload.clone(), patience).await
}

/// As [`send_until_throttled`], with message `n`'s payload built by `payload(n)`, so that every
/// message can be told apart. Returns how many sends finished: messages `0..returned` went
/// out. Message number `returned`, whose send was given up, may sit in the client's write
/// buffer and still go out with the next write (a close frame, say).
pub async fn send_numbered_until_throttled(
    sink: &mut Sink,
    mut payload: impl FnMut(usize) -> Bytes,
    patience: std::time::Duration,
) -> usize {
    let mut sent = 0usize;
    loop {
        let send = sink.send(Message::binary(payload(sent)));
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

/// The read half of a split client.
pub type Stream =
    futures::stream::SplitStream<tokio_tungstenite::WebSocketStream<MaybeTlsStream<TcpStream>>>;

/// Sends a close frame (1000) and reads until the server's close frame comes back, within
/// `within`: true if the close handshake completed, the server having read everything sent
/// before it. Data messages read meanwhile are discarded.
pub async fn close_gracefully(
    sink: &mut Sink,
    stream: &mut Stream,
    within: std::time::Duration,
) -> bool {
    let handshake = async {
        sink.send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            },
        )))
        .await
        .ok()?;
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(_))) => return Some(()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    };
    matches!(tokio::time::timeout(within, handshake).await, Ok(Some(())))
}
