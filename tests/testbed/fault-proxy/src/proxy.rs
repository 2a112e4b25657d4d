//! The reverse proxy: classify and count each request, apply the fault rules, forward it to
//! the apiserver over a pooled TLS connection and stream the response back.

use std::cell::RefCell;
use std::convert::Infallible;
use std::os::fd::RawFd;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE,
    HOST, RETRY_AFTER, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::Notify;

use crate::classify::{classify, Verb};
use crate::counts::Counts;
use crate::rules::{status_body, Req, Rules, Terminal};
use crate::stream::ProxyBody;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

pub struct State {
    pub client: UpstreamClient,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix of the upstream URL (usually empty).
    pub base_path: String,
    pub rules: Rules,
    pub counts: Arc<Counts>,
    /// Sent as `Authorization` when the client sends none (`--inject-token`).
    pub inject_auth: Option<HeaderValue>,
}

/// Per client connection: what a `reset` needs to kill it.
pub struct ConnCtx {
    pub fd: RawFd,
    pub reset: Notify,
}

thread_local! {
    /// Scratch space for the normalised path, so classifying allocates nothing.
    static PATTERN: RefCell<String> = RefCell::new(String::with_capacity(128));
}

const MAX_DRAIN: u64 = 1 << 20;

fn json_response(code: u16, retry_after: Option<u64>, body: Bytes) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(s) = retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// Make the kernel answer the next close with a TCP RST instead of a FIN.
fn set_linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the connection's socket, still open (its connection task is running
    // this request); SO_LINGER takes a `struct linger`.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!("SO_LINGER failed: {}", std::io::Error::last_os_error());
    }
}

/// Abort the client connection: RST, no response. Never returns (the connection task drops
/// this request together with the connection).
async fn reset(conn: &ConnCtx) -> Result<Response<ProxyBody>, Infallible> {
    set_linger_zero(conn.fd);
    conn.reset.notify_one();
    std::future::pending().await
}

fn strip_hop_headers(h: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    if let Some(c) = h.get(CONNECTION) {
        let named: Vec<HeaderName> = c
            .to_str()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        h.remove(n);
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
    ] {
        h.remove(n);
    }
}

async fn forward(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let pq = if state.base_path.is_empty() {
        pq
    } else {
        format!("{}{}", state.base_path, pq).parse().unwrap_or(pq)
    };
    let mut up = hyper::http::uri::Parts::default();
    up.scheme = Some(state.scheme.clone());
    up.authority = Some(state.authority.clone());
    up.path_and_query = Some(pq);
    parts.uri = Uri::from_parts(up).expect("upstream URI from valid parts");
    strip_hop_headers(&mut parts.headers);
    parts.headers.remove(HOST);
    if let Some(auth) = &state.inject_auth {
        if !parts.headers.contains_key(AUTHORIZATION) {
            parts.headers.insert(AUTHORIZATION, auth.clone());
        }
    }
    parts.version = Version::HTTP_11;
    state.client.request(Request::from_parts(parts, body)).await
}

pub async fn handle(
    state: Arc<State>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (info, plan) = PATTERN.with(|buf| {
        let mut pattern = buf.borrow_mut();
        let uri = req.uri();
        let (path, query) = (uri.path(), uri.query());
        let info = classify(req.method(), path, query, &mut pattern);
        state.counts.record_request(info.verb, &pattern, path);
        let plan = state.rules.evaluate(&Req {
            info,
            path,
            query,
            pattern: &pattern,
        });
        (info, plan)
    });
    let guard = info.long_running.then(|| state.counts.long_running());

    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }

    match &plan.terminal {
        Some(Terminal::Status {
            code,
            retry_after,
            body,
            after_upstream: false,
        }) => {
            // Read a small request body so the connection stays usable.
            let small = req
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n <= MAX_DRAIN);
            if small {
                let _ = req.into_body().collect().await;
            }
            state.counts.record_status(*code);
            return Ok(json_response(*code, *retry_after, body.clone()));
        }
        Some(Terminal::Reset {
            after_upstream: false,
        }) => return reset(&conn).await,
        _ => {}
    }

    if req.headers().contains_key(UPGRADE) {
        state.counts.record_status(501);
        let body = status_body(
            501,
            "NotImplemented",
            "fault-proxy does not proxy upgraded connections (exec, attach, port-forward)",
            None,
        );
        return Ok(json_response(501, None, body));
    }

    let resp = match forward(&state, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("upstream request failed: {e:?}");
            state.counts.record_status(502);
            let body = status_body(
                502,
                "InternalError",
                &format!("fault-proxy: upstream request failed: {e}"),
                None,
            );
            return Ok(json_response(502, None, body));
        }
    };

    match plan.terminal {
        Some(Terminal::Status {
            code,
            retry_after,
            body,
            after_upstream: true,
        }) => {
            drop(resp);
            state.counts.record_status(code);
            return Ok(json_response(code, retry_after, body));
        }
        Some(Terminal::Reset {
            after_upstream: true,
        }) => {
            drop(resp);
            return reset(&conn).await;
        }
        _ => {}
    }

    let (mut rp, rbody) = resp.into_parts();
    strip_hop_headers(&mut rp.headers);
    state.counts.record_status(rp.status.as_u16());
    let body = if !plan.stream.is_empty() && rp.status == StatusCode::OK {
        rp.headers.remove(CONTENT_LENGTH);
        let json = rp
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        ProxyBody::shaped(rbody, plan.stream, info.verb == Verb::Watch && json, guard)
    } else {
        ProxyBody::pass(rbody, guard)
    };
    Ok(Response::from_parts(rp, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        strip_hop_headers(&mut h);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key(AUTHORIZATION) && h.contains_key(CONTENT_TYPE));
    }
}
