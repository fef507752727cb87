//! The JSON admin API under `/admin/` (README, "Admin API"): sessions, channels, drain and the
//! effective configuration. Every answer is a JSON object; every error is
//! `{"error": reason}` with its status.

use std::str::FromStr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::{AdminContext, error, json};
use crate::pair::{ChannelId, Role};
use crate::router::Location;
use crate::v1::ClientId;

/// Sessions listed per page by default, and at most.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Answers `method` on `/admin/<route>`.
pub async fn respond(
    method: &Method,
    route: &str,
    query: Option<&str>,
    ctx: &AdminContext,
) -> Response<Full<Bytes>> {
    let segments: Vec<&str> = route.split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["sessions"]) => sessions(query, ctx),
        (&Method::GET, ["channels", id]) => match ChannelId::from_str(id) {
            Ok(id) => channel(&id, ctx).await,
            Err(_) => bad_channel_id(),
        },
        (&Method::POST, ["channels", id, "close"]) => match ChannelId::from_str(id) {
            Ok(id) => close(&id, query, ctx).await,
            Err(_) => bad_channel_id(),
        },
        (&Method::GET, ["drain"]) => drain_progress(ctx),
        (&Method::POST, ["drain"]) => {
            let wait_for_raw = match query_param(query, "raw").as_deref() {
                None => ctx.drain_waits_for_raw,
                Some("wait") => true,
                Some("close") => false,
                Some(_) => {
                    return error(StatusCode::BAD_REQUEST, "`raw` is `wait` or `close`");
                }
            };
            let hub = std::sync::Arc::clone(&ctx.session.router.hub);
            let started = ctx.drain.start_with(hub, wait_for_raw);
            let mut body = progress(ctx);
            body["started_now"] = started.into();
            json(StatusCode::ACCEPTED, &body)
        }
        (&Method::GET, ["config"]) => config(ctx),
        (_, ["sessions" | "drain" | "config"] | ["channels", _] | ["channels", _, "close"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "wrong method for this path")
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "no such admin path; see the README, \"Admin API\"",
        ),
    }
}

fn bad_channel_id() -> Response<Full<Bytes>> {
    error(
        StatusCode::BAD_REQUEST,
        "a channel id is 32 characters of [A-Za-z0-9_]",
    )
}

/// The value of query parameter `name`, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn client_json(client: Option<ClientId>) -> Value {
    match client {
        Some(client) => json!({"sid": format!("{:016x}", client.sid), "gen": client.generation}),
        None => Value::Null,
    }
}

/// `GET /admin/sessions?offset=N&limit=M`: this node's sessions, ordered by channel id and
/// role, a page at a time.
fn sessions(query: Option<&str>, ctx: &AdminContext) -> Response<Full<Bytes>> {
    let number = |name, default: usize| match query_param(query, name) {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| format!("`{name}` must be a non-negative integer")),
    };
    let (offset, limit) = match (number("offset", 0), number("limit", PAGE)) {
        (Ok(offset), Ok(limit)) => (offset, limit.clamp(1, MAX_PAGE)),
        (Err(problem), _) | (_, Err(problem)) => {
            return error(StatusCode::BAD_REQUEST, &problem);
        }
    };
    let mut all = Vec::new();
    ctx.session
        .router
        .hub
        .for_each_local(|channel_id, role, handle| {
            all.push((*channel_id, role, handle.id, handle.client));
        });
    let total = all.len();
    // Only the sessions up to the end of the page are put in order: selecting them is linear,
    // sorting them takes what the page's size and offset take.
    let key = |s: &(ChannelId, Role, u64, Option<ClientId>)| (*s.0.as_bytes(), s.1 == Role::Web);
    let end = offset.saturating_add(limit).min(total);
    if end > 0 && end < total {
        all.select_nth_unstable_by_key(end - 1, key);
        all.truncate(end);
    }
    all.sort_unstable_by_key(key);
    let page: Vec<Value> = all
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(channel_id, role, session, client)| {
            json!({
                "channel_id": channel_id.as_str(), "role": role.to_string(),
                "session": session, "v1": client_json(client),
            })
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "node": ctx.session.router.me().id.to_string(),
            "total": total, "offset": offset, "limit": limit, "sessions": page,
        }),
    )
}

fn location_json(location: Option<Location>, here: crate::node::NodeId) -> Value {
    match location {
        None => Value::Null,
        Some(location) => json!({
            "node": location.node.to_string(), "here": location.node == here,
            "advertise": location.advertise, "session": location.session,
            "live": location.live, "v1": client_json(location.client),
        }),
    }
}

/// `GET /admin/channels/ID`: which node holds each role (this node's hub, then the routes in
/// Redis).
async fn channel(channel_id: &ChannelId, ctx: &AdminContext) -> Response<Full<Bytes>> {
    let router = &ctx.session.router;
    let here = router.me().id;
    let (app, web) = tokio::join!(
        router.locate(channel_id, Role::App),
        router.locate(channel_id, Role::Web)
    );
    match (app, web) {
        (Ok(app), Ok(web)) => json(
            StatusCode::OK,
            &json!({
                "channel_id": channel_id.as_str(),
                "app": location_json(app, here), "web": location_json(web, here),
            }),
        ),
        (Err(err), _) | (_, Err(err)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the registry did not answer: {err}"),
        ),
    }
}

/// `POST /admin/channels/ID/close?reason=TEXT`: closes this node's sessions of the channel
/// with 4004 and the reason; names the nodes holding the others (from the routes in Redis),
/// whose admin API closes them.
async fn close(
    channel_id: &ChannelId,
    query: Option<&str>,
    ctx: &AdminContext,
) -> Response<Full<Bytes>> {
    let reason = query_param(query, "reason").unwrap_or_else(|| "closed by an operator".into());
    let router = &ctx.session.router;
    let here = router.me().id;
    let mut closed = Vec::new();
    let mut elsewhere = Vec::new();
    for role in [Role::App, Role::Web] {
        if let Some(handle) = router.hub.local(channel_id, role) {
            ctx.session.closes.put(handle.id, &reason);
            handle.stop.cancel();
            // A session that had already ended took its reason before it was put.
            if handle.outbound_tx.is_closed() {
                ctx.session.closes.take(handle.id);
            }
            closed.push(role.to_string());
            continue;
        }
        match router.locate(channel_id, role).await {
            Ok(Some(location)) if location.node != here && location.live => {
                elsewhere.push(json!({
                    "role": role.to_string(), "node": location.node.to_string(),
                    "advertise": location.advertise,
                }));
            }
            Ok(_) => {}
            Err(err) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("closed {closed:?} here; the registry did not answer: {err}"),
                );
            }
        }
    }
    tracing::info!(%channel_id, reason, closed = ?closed, "channel closed by an operator");
    json(
        StatusCode::OK,
        &json!({"channel_id": channel_id.as_str(), "closed": closed, "elsewhere": elsewhere}),
    )
}

/// Where the drain stands.
fn progress(ctx: &AdminContext) -> Value {
    let progress = ctx.drain.progress();
    json!({
        "draining": progress.started, "done": progress.done,
        "elapsed_ms": u64::try_from(progress.elapsed.as_millis()).unwrap_or(u64::MAX),
        "v1_left": progress.v1_left, "raw_left": progress.raw_left,
        "goaway_sent": progress.goaway_sent,
    })
}

fn drain_progress(ctx: &AdminContext) -> Response<Full<Bytes>> {
    json(StatusCode::OK, &progress(ctx))
}

/// `GET /admin/config`: every key's effective value, secrets redacted.
fn config(ctx: &AdminContext) -> Response<Full<Bytes>> {
    let values: serde_json::Map<String, Value> = ctx
        .effective
        .redacted()
        .map(|(key, value)| {
            let value = serde_json::to_value(&value).unwrap_or(Value::Null);
            (key.to_owned(), value)
        })
        .collect();
    json(StatusCode::OK, &Value::Object(values))
}
