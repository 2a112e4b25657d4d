//! The kubelet's HTTPS endpoint as far as the apiserver needs it: `GET /containerLogs/...`
//! (what `pods/<p>/log` proxies to) and `/healthz`. Self-signed certificate; the apiserver does
//! not verify kubelet certificates unless `--kubelet-certificate-authority` is set. No
//! authentication or authorization is done.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::ctx::Ctx;
use crate::logs::{parse_query, validate_log_status, LogCursor, LogTarget};

type Body = BoxBody<Bytes, io::Error>;

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(
            Full::new(body.into())
                .map_err(|never: Infallible| match never {})
                .boxed(),
        )
        .unwrap()
}

/// A self-signed serving certificate for 127.0.0.1, localhost and the node name.
pub fn tls_acceptor(node: &str, state_dir: Option<&Path>) -> anyhow::Result<TlsAcceptor> {
    let ck = rcgen::generate_simple_self_signed(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        node.to_string(),
    ])?;
    if let Some(dir) = state_dir {
        std::fs::write(dir.join("kubelet.crt"), ck.cert.pem())?;
        std::fs::write(dir.join("kubelet.key"), ck.signing_key.serialize_pem())?;
    }
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        ck.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

fn decode_segment(s: &str) -> String {
    // path segments of namespaces, pod and container names never need more than %XX
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Result<Response<Body>, io::Error> {
    let path = req.uri().path().to_string();
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "405: Method Not Allowed",
        ));
    }
    if path == "/healthz" {
        return Ok(text(StatusCode::OK, "ok"));
    }
    let Some(rest) = path.strip_prefix("/containerLogs/") else {
        return Ok(text(StatusCode::NOT_FOUND, "404 page not found\n"));
    };
    let segs: Vec<String> = rest.split('/').map(decode_segment).collect();
    if segs.len() != 3 || segs.iter().any(|s| s.is_empty()) {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            r#"{"message": "Missing podID or containerName."}"#,
        ));
    }
    let (ns, pod, container) = (&segs[0], &segs[1], &segs[2]);
    let query = match parse_query(req.uri().query(), Utc::now()) {
        Ok(q) => q,
        Err(e) => return Ok(text(StatusCode::BAD_REQUEST, e)),
    };
    tracing::debug!(%ns, %pod, %container, ?query, "log request");
    let Some(p) = ctx.logs.get(ns, pod) else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("pod {pod:?} does not exist\n"),
        ));
    };
    if p.is_lost() {
        // an unreachable node: the connection just breaks
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "node lost",
        ));
    }
    let Some(c) = p.containers.get(container.as_str()).cloned() else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("container {container:?} not found in pod {pod:?}\n"),
        ));
    };
    let view = c.view.lock().unwrap().clone();
    let target = match validate_log_status(view.as_ref(), container, pod, query.previous) {
        Ok(t) => t,
        Err(e) => return Ok(text(StatusCode::BAD_REQUEST, e)),
    };
    let LogTarget::ContainerId(id) = target;
    let Some(buf) = c.attempt(&id) else {
        return Ok(text(StatusCode::OK, Bytes::new()));
    };
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(8);
    let follow = query.follow;
    let pod_logs = p.clone();
    tokio::spawn(async move {
        let mut cursor = LogCursor::new(&buf, query);
        let mut notify = buf.subscribe();
        const BATCH: usize = 2048;
        loop {
            notify.borrow_and_update();
            let chunk = buf.read_from(cursor.seq, BATCH);
            let mut out = Vec::new();
            cursor.render(&chunk.lines, &mut out);
            cursor.seq = chunk.next_seq;
            if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
                return;
            }
            if cursor.limit_reached() {
                return;
            }
            if chunk.lines.len() == BATCH {
                continue;
            }
            if pod_logs.is_lost() {
                let _ = tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "node lost",
                    )))
                    .await;
                return;
            }
            if chunk.closed || !follow {
                return;
            }
            tokio::select! {
                r = notify.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(BoxBody::new(StreamBody::new(stream)))
        .unwrap())
}

pub async fn bind(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await
}

pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, ctx: Arc<Ctx>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| handle(req, ctx.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        });
    }
}
