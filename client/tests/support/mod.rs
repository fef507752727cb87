//! A minimal in-process stand-in for wspair nodes, enough to drive the client end to end:
//! v1 handshake with the subprotocol echo, `welcome`, `peer` notices, relaying of DATA, ACK and
//! PEER frames between the two roles of one channel, slot takeover by a higher `gen` (4001),
//! `goaway`, and refusals. Every listener shares one state, like the nodes of a cluster.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wspair_client::frame::{Frame, PeerInfo, PeerState, ServerMsg, Welcome, Window, sid_of_key};

struct Session {
    id: u64,
    sid: u64,
    r#gen: u32,
    tx: mpsc::UnboundedSender<Message>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    next_id: u64,
    window: Option<Window>,
    refuse: Option<(u16, String)>,
    no_echo: bool,
    /// Every (role, gen) that connected, in order.
    connects: Vec<(String, u32, String)>,
}

/// Relay nodes sharing one state.
pub struct Relay {
    pub urls: Vec<String>,
    state: Arc<Mutex<State>>,
}

fn other(role: &str) -> &'static str {
    if role == "app" { "web" } else { "app" }
}

fn server_frame(msg: ServerMsg) -> Message {
    Message::Binary(Frame::Server(msg).encode())
}

fn online(s: &Session) -> Message {
    server_frame(ServerMsg::Peer(PeerInfo {
        state: PeerState::Online,
        sid: Some(s.sid),
        r#gen: Some(s.r#gen),
        raw: false,
    }))
}

fn away() -> Message {
    server_frame(ServerMsg::Peer(PeerInfo {
        state: PeerState::Away,
        sid: None,
        r#gen: None,
        raw: false,
    }))
}

impl Relay {
    /// Starts `nodes` listeners on 127.0.0.1.
    pub async fn start(nodes: usize) -> Relay {
        let state = Arc::new(Mutex::new(State::default()));
        let mut urls = Vec::new();
        for n in 0..nodes {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("ws://{}/channel", listener.local_addr().unwrap()));
            let state = state.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, state.clone(), format!("node{n}")));
                }
            });
        }
        Relay { urls, state }
    }

    /// The window `welcome` states (default 1024 messages, 1 MiB).
    pub fn set_window(&self, msgs: u64, bytes: u64) {
        self.state.lock().unwrap().window = Some(Window { msgs, bytes });
    }

    /// Refuse every handshake with this status and reason.
    pub fn refuse(&self, status: u16, reason: &str) {
        self.state.lock().unwrap().refuse = Some((status, reason.into()));
    }

    /// Stop refusing handshakes.
    pub fn accept(&self) {
        self.state.lock().unwrap().refuse = None;
    }

    /// Answer without echoing the subprotocol.
    pub fn no_echo(&self) {
        self.state.lock().unwrap().no_echo = true;
    }

    /// Sends `goaway` to the session holding `role`.
    pub fn goaway(&self, role: &str) {
        let st = self.state.lock().unwrap();
        let s = st.sessions.get(role).expect("a session holds the role");
        let _ = s.tx.send(server_frame(ServerMsg::Goaway {
            reason: "drain".into(),
        }));
    }

    /// Every connection so far: (role, gen, node).
    pub fn connects(&self) -> Vec<(String, u32, String)> {
        self.state.lock().unwrap().connects.clone()
    }
}

#[derive(Default, Clone)]
struct Params {
    role: String,
    sid: Option<u64>,
    r#gen: Option<u32>,
    v1: bool,
}

fn parse_query(q: &str) -> Params {
    let mut p = Params::default();
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "type" => p.role = v.into(),
            "key" => p.sid = u128::from_str_radix(v, 16).ok().map(sid_of_key),
            "gen" => p.r#gen = v.parse().ok(),
            _ => {}
        }
    }
    p
}

async fn serve(stream: TcpStream, state: Arc<Mutex<State>>, node: String) {
    let params = Arc::new(Mutex::new(Params::default()));
    let (p2, st2) = (params.clone(), state.clone());
    // The signature is tungstenite's handshake callback's.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let st = st2.lock().unwrap();
        if let Some((status, reason)) = &st.refuse {
            let mut err = ErrorResponse::new(Some(reason.clone()));
            *err.status_mut() = StatusCode::from_u16(*status).unwrap();
            return Err(err);
        }
        let mut p = parse_query(req.uri().query().unwrap_or(""));
        p.v1 = req
            .headers()
            .get("sec-websocket-protocol")
            .is_some_and(|v| v.to_str().unwrap_or("").contains("wspair.v1"));
        if p.v1 && !st.no_echo {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("wspair.v1"),
            );
        }
        *p2.lock().unwrap() = p;
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let p = params.lock().unwrap().clone();
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
    });
    if !p.v1 || state.lock().unwrap().no_echo {
        // A raw client: echo its messages back.
        while let Some(Ok(m)) = source.next().await {
            if m.is_text() || m.is_binary() {
                let _ = tx.send(m);
            }
        }
        return;
    }
    let (sid, r#gen) = (p.sid.unwrap(), p.r#gen.unwrap());
    let role = p.role.clone();
    let id = {
        let mut st = state.lock().unwrap();
        st.next_id += 1;
        let id = st.next_id;
        st.connects.push((role.clone(), r#gen, node.clone()));
        if let Some(old) = st.sessions.get(&role) {
            let _ = old.tx.send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(4001),
                reason: "replaced".into(),
            })));
        }
        let window = st.window.unwrap_or(Window {
            msgs: 1024,
            bytes: 1 << 20,
        });
        let _ = tx.send(server_frame(ServerMsg::Welcome(Welcome {
            node: node.clone(),
            session: id,
            r#gen,
            window,
            max_frame: 65_536,
            max_batch: None,
            token_exp: None,
        })));
        let me = Session {
            id,
            sid,
            r#gen,
            tx: tx.clone(),
        };
        match st.sessions.get(other(&role)) {
            Some(o) => {
                let _ = tx.send(online(o));
                let _ = o.tx.send(online(&me));
            }
            None => {
                let _ = tx.send(away());
            }
        }
        st.sessions.insert(role.clone(), me);
        id
    };
    while let Some(Ok(m)) = source.next().await {
        match m {
            Message::Binary(b) => {
                let st = state.lock().unwrap();
                if st.sessions.get(&role).map(|s| s.id) == Some(id)
                    && let Some(o) = st.sessions.get(other(&role))
                {
                    let _ = o.tx.send(Message::Binary(b));
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let mut st = state.lock().unwrap();
    if st.sessions.get(&role).map(|s| s.id) == Some(id) {
        st.sessions.remove(&role);
        if let Some(o) = st.sessions.get(other(&role)) {
            let _ = o.tx.send(away());
        }
    }
}
