//! The control API (plain HTTP, JSON): add/remove fault rules, read/reset counters.
//!
//! | request                | effect                                                     |
//! |------------------------|------------------------------------------------------------|
//! | `POST /rules`          | add a rule (object) or rules (array): `{"id":N}` / `{"ids":[..]}` |
//! | `GET /rules`           | the rules with `matched` / `applied` / `exhausted`         |
//! | `DELETE /rules/{id}`   | remove one rule                                            |
//! | `DELETE /rules`        | remove all rules                                           |
//! | `GET /counts`          | request counters                                           |
//! | `POST /counts/reset`   | zero the counters                                          |
//! | `POST /reset`          | remove all rules and zero the counters                     |
//! | `GET /healthz`         | `ok`                                                       |

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::proxy::State;

type Resp = Response<Full<Bytes>>;

fn reply(code: StatusCode, v: Value) -> Resp {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(code: StatusCode, msg: impl Into<String>) -> Resp {
    reply(code, json!({ "error": msg.into() }))
}

/// Add one rule or an array of rules (all or nothing).
pub fn add_rules(state: &State, v: Value) -> Result<Value, String> {
    match v {
        Value::Array(items) => {
            // Validate all first so a bad entry adds nothing.
            for (i, item) in items.iter().enumerate() {
                crate::rules::Rule::from_json(0, item.clone())
                    .map_err(|e| format!("rule {i}: {e}"))?;
            }
            let ids: Vec<u64> = items
                .into_iter()
                .map(|item| state.rules.add(item))
                .collect::<Result<_, _>>()?;
            Ok(json!({ "ids": ids }))
        }
        v => Ok(json!({ "id": state.rules.add(v)? })),
    }
}

pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, json!("ok")),
        (&Method::POST, "/rules") => {
            let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return Ok(error(StatusCode::BAD_REQUEST, format!("reading body: {e}"))),
            };
            match serde_json::from_slice::<Value>(&body) {
                Err(e) => error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
                Ok(v) => match add_rules(&state, v) {
                    Ok(v) => {
                        tracing::info!("rules added: {v}");
                        reply(StatusCode::CREATED, v)
                    }
                    Err(e) => error(StatusCode::BAD_REQUEST, e),
                },
            }
        }
        (&Method::GET, "/rules") => {
            reply(StatusCode::OK, json!({ "rules": state.rules.to_json() }))
        }
        (&Method::DELETE, "/rules") => {
            reply(StatusCode::OK, json!({ "deleted": state.rules.clear() }))
        }
        (&Method::DELETE, p) if p.starts_with("/rules/") => {
            match p["/rules/".len()..].parse::<u64>() {
                Ok(id) if state.rules.remove(id) => reply(StatusCode::OK, json!({ "deleted": id })),
                Ok(id) => error(StatusCode::NOT_FOUND, format!("no rule {id}")),
                Err(_) => error(StatusCode::BAD_REQUEST, "rule id must be a number"),
            }
        }
        (&Method::GET, "/counts") => reply(StatusCode::OK, state.counts.to_json()),
        (&Method::POST, "/counts/reset") => {
            state.counts.reset();
            reply(StatusCode::OK, json!({ "reset": true }))
        }
        (&Method::POST, "/reset") => {
            let n = state.rules.clear();
            state.counts.reset();
            reply(StatusCode::OK, json!({ "deleted": n, "reset": true }))
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
    };
    Ok(resp)
}
