//! fault-proxy: a fault-injecting reverse proxy between a Kubernetes client and the
//! kube-apiserver, configured at run time through a JSON control API. See README.md.

mod classify;
mod control;
mod counts;
mod kubeconfig;
mod proxy;
mod rules;
mod stream;
mod tls;

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use hyper::header::HeaderValue;
use hyper::http::uri::{Authority, Scheme};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use crate::proxy::{ConnCtx, State};

/// Fault-injecting proxy for the Kubernetes API (testbed).
#[derive(Parser, Debug)]
#[command(name = "fault-proxy", version)]
struct Cli {
    /// Kubeconfig to take the upstream server, CA and token from (current context).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Upstream apiserver URL (overrides the kubeconfig's server).
    #[arg(long)]
    upstream: Option<String>,
    /// PEM file with the CA to verify the upstream with (overrides the kubeconfig's CA).
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// Do not verify the upstream's certificate.
    #[arg(long)]
    upstream_insecure: bool,
    /// Address for clients.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address of the control API.
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// Serve clients over HTTPS with a freshly generated CA and certificate
    /// (127.0.0.1, localhost, ::1).
    #[arg(long)]
    tls: bool,
    /// With --tls: write the CA certificate (PEM) clients should trust here.
    #[arg(long)]
    tls_ca_out: Option<PathBuf>,
    /// Write a copy of --kubeconfig pointing at the proxy here.
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// Write a copy of kubeconfig SRC pointing at the proxy to DST (repeatable), e.g. for the
    /// narrow-RBAC user.
    #[arg(long, value_name = "SRC=DST")]
    rewrite_kubeconfig: Vec<String>,
    /// Add the kubeconfig's bearer token to requests that carry no Authorization header.
    #[arg(long)]
    inject_token: bool,
    /// JSON file with rules (an array) to install at start.
    #[arg(long)]
    rules: Option<PathBuf>,
}

/// Let the proxy hold thousands of connections (two fds per proxied stream).
fn raise_nofile_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

async fn serve_conn<I>(io: I, state: Arc<State>, ctx: Arc<ConnCtx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| proxy::handle(state.clone(), svc_ctx.clone(), req));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!("client connection: {e}");
            }
        }
        // A `reset` rule set SO_LINGER 0: dropping the connection now sends a RST.
        _ = ctx.reset.notified() => tracing::debug!("client connection reset"),
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, tls: Option<TlsAcceptor>) {
    loop {
        let stream: TcpStream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = Arc::new(ConnCtx {
            fd: stream.as_raw_fd(),
            reset: Notify::new(),
        });
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_conn(stream, state, ctx).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => serve_conn(s, state, ctx).await,
                    Err(e) => tracing::debug!("TLS handshake: {e}"),
                },
            }
        });
    }
}

async fn control_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| control::handle(state.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn run(cli: Cli) -> Result<()> {
    raise_nofile_limit();

    let from_kc = match &cli.kubeconfig {
        Some(p) => Some(kubeconfig::read_upstream(p).await?),
        None => None,
    };
    let server = cli
        .upstream
        .clone()
        .or_else(|| from_kc.as_ref().map(|u| u.server.clone()))
        .ok_or_else(|| anyhow!("need --upstream or --kubeconfig"))?;
    let roots = match &cli.upstream_ca {
        Some(p) => Some(tls::pem_certs(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )?),
        None => from_kc.as_ref().and_then(|u| u.roots.clone()),
    };
    let insecure = cli.upstream_insecure
        || (cli.upstream_ca.is_none() && from_kc.as_ref().is_some_and(|u| u.insecure));

    let uri: Uri = server
        .parse()
        .with_context(|| format!("bad upstream URL {server}"))?;
    let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTPS);
    let authority: Authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| anyhow!("upstream URL {server} has no host"))?;
    let base_path = uri.path().trim_end_matches('/').to_string();

    let client_tls = if scheme == Scheme::HTTPS {
        tls::upstream_config(roots, insecure)?
    } else {
        tls::upstream_config(None, true)?
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector);

    let inject_auth = if cli.inject_token {
        let t = from_kc
            .as_ref()
            .and_then(|u| u.token.clone())
            .ok_or_else(|| anyhow!("--inject-token needs a kubeconfig with a token"))?;
        let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
            .context("token is not a valid header value")?;
        v.set_sensitive(true);
        Some(v)
    } else {
        None
    };

    let state = Arc::new(State {
        client,
        scheme,
        authority,
        base_path,
        rules: rules::Rules::default(),
        counts: Arc::new(counts::Counts::default()),
        inject_auth,
    });

    if let Some(p) = &cli.rules {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?;
        control::add_rules(&state, v).map_err(|e| anyhow!("{}: {e}", p.display()))?;
    }

    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let control_listener = TcpListener::bind(cli.control)
        .await
        .with_context(|| format!("binding {}", cli.control))?;
    let listen_addr = listener.local_addr()?;
    let control_addr = control_listener.local_addr()?;

    let (acceptor, ca_pem) = if cli.tls {
        let t = tls::server_tls()?;
        (Some(TlsAcceptor::from(t.config)), Some(t.ca_pem))
    } else {
        (None, None)
    };
    let proxy_url = format!(
        "{}://{}",
        if cli.tls { "https" } else { "http" },
        listen_addr
    );
    if let Some(p) = &cli.tls_ca_out {
        let pem = ca_pem
            .as_deref()
            .ok_or_else(|| anyhow!("--tls-ca-out needs --tls"))?;
        std::fs::write(p, pem).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(dst) = &cli.write_kubeconfig {
        let src = cli
            .kubeconfig
            .as_ref()
            .ok_or_else(|| anyhow!("--write-kubeconfig needs --kubeconfig"))?;
        kubeconfig::rewrite(src, dst, &proxy_url, ca_pem.as_deref())?;
    }
    for pair in &cli.rewrite_kubeconfig {
        let Some((src, dst)) = pair.split_once('=') else {
            bail!("--rewrite-kubeconfig wants SRC=DST, got {pair}");
        };
        kubeconfig::rewrite(src.as_ref(), dst.as_ref(), &proxy_url, ca_pem.as_deref())?;
    }

    tokio::spawn(accept_loop(listener, state.clone(), acceptor));
    tokio::spawn(control_loop(control_listener, state.clone()));

    tracing::info!(upstream = %server, %proxy_url, control = %control_addr, "serving");
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "fault-proxy ready listen={listen_addr} control={control_addr}"
        )?;
        out.flush()?;
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fault-proxy: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let r = rt.block_on(run(cli));
    // Do not wait for open streams (watches never end by themselves).
    rt.shutdown_background();
    if let Err(e) = r {
        eprintln!("fault-proxy: {e:#}");
        std::process::exit(1);
    }
}
