#![doc = include_str!("../README.md")]

mod behaviour;
mod container;
mod ctx;
mod dispatch;
mod events;
mod exec;
mod logs;
mod node;
mod pod;
mod server;
mod status;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::signal::unix::{signal, SignalKind};

/// Kubelet stand-in for the testbed: registers a node, "runs" the pods the kube-scheduler binds
/// to it (local processes or scripted behaviour chosen by `testbed.prefect.io/*` annotations),
/// serves their logs, and plays a node autoscaler for pods no node can take.
#[derive(Parser, Debug)]
#[command(name = "fake-kubelet", version)]
struct Cli {
    /// Kubeconfig of a user allowed to manage nodes, pods, pods/status, events, and to read
    /// secrets and configmaps.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    #[arg(long, default_value = "fake-node")]
    node_name: String,
    /// HTTPS port of the log server on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where to write `port`, `pid` and the serving certificate (`kubelet.crt`, `kubelet.key`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Concurrent API writes for status patches and deletions.
    #[arg(long, default_value_t = 32)]
    api_concurrency: usize,
    /// Concurrent Event writes.
    #[arg(long, default_value_t = 16)]
    event_concurrency: usize,
    /// First restart back-off (doubles per restart, capped at 300 s); also paces image-pull
    /// and config-error retries. Per pod: `testbed.prefect.io/restart-backoff-seconds`.
    #[arg(long, default_value_t = 10.0)]
    restart_backoff_seconds: f64,
    /// Log kept per container attempt, in MiB (oldest lines dropped beyond).
    #[arg(long, default_value_t = 64)]
    max_log_mib: usize,
    /// Extra host environment variables passed to exec containers (PATH, HOME, LANG, TMPDIR
    /// always are). Repeatable.
    #[arg(long = "pass-env")]
    pass_env: Vec<String>,
    /// How long an exec container with neither command nor args runs.
    #[arg(long, default_value_t = 1.0)]
    no_command_run_seconds: f64,
    #[arg(long, default_value_t = 10.0)]
    heartbeat_seconds: f64,
    /// Delete the Node object on SIGTERM/SIGINT.
    #[arg(long)]
    delete_node_on_exit: bool,
}

async fn client(path: &PathBuf) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

fn host_env(pass: &[String]) -> Vec<(String, String)> {
    let mut names = vec!["PATH", "HOME", "LANG", "TMPDIR"];
    names.extend(pass.iter().map(|s| s.as_str()));
    let mut env: Vec<(String, String)> = Vec::new();
    for n in names {
        if let Ok(v) = std::env::var(n) {
            if !env.iter().any(|(k, _)| k == n) {
                env.push((n.to_string(), v));
            }
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    env
}

async fn shutdown_processes(ctx: &ctx::Ctx) {
    let procs = ctx.procs.snapshot();
    if procs.is_empty() {
        return;
    }
    tracing::info!(containers = procs.len(), "stopping exec containers");
    let signal_all = |sig: i32| {
        procs
            .iter()
            .map(|(marker, pid)| exec::signal_container(*pid, marker, sig))
            .sum::<usize>()
    };
    signal_all(libc::SIGTERM);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let alive: usize = procs
            .iter()
            .map(|(m, p)| exec::container_pids(*p, m).len())
            .sum();
        if alive == 0 {
            return;
        }
    }
    signal_all(libc::SIGKILL);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();

    let client = client(&cli.kubeconfig).await?;
    exec::become_subreaper();
    if let Some(d) = &cli.state_dir {
        std::fs::create_dir_all(d)?;
    }
    let listener = server::bind(cli.port)
        .await
        .context("binding the log server")?;
    let port = listener.local_addr()?.port();
    let acceptor = server::tls_acceptor(&cli.node_name, cli.state_dir.as_deref())?;
    let ctx = ctx::Ctx::new(
        client,
        cli.node_name.clone(),
        cli.api_concurrency,
        cli.event_concurrency,
        ctx::Opts {
            restart_backoff: Duration::from_secs_f64(cli.restart_backoff_seconds.max(0.0)),
            max_log_bytes: cli.max_log_mib.max(1) << 20,
            host_env: host_env(&cli.pass_env),
            cwd: std::env::current_dir()?,
            no_command_run: Duration::from_secs_f64(cli.no_command_run_seconds.max(0.0)),
            heartbeat: Duration::from_secs_f64(cli.heartbeat_seconds.max(1.0)),
        },
    );
    let _ = ctx.port.set(port);
    tokio::spawn(server::serve(listener, acceptor, ctx.clone()));

    let mut tries = 0;
    loop {
        match node::register(&ctx, port).await {
            Ok(()) => break,
            Err(e) if tries < 60 => {
                tries += 1;
                tracing::warn!(error = %e, "registering the node failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context("registering the node")),
        }
    }
    tokio::spawn(node::heartbeat(ctx.clone(), port));
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let c = ctx.clone();
                let _ = tokio::task::spawn_blocking(move || c.procs.reap()).await;
            }
        });
    }
    tokio::spawn(dispatch::run(ctx.clone()));
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let s = &ctx.stats;
                let line = format!(
                    "pods={} live_logs={} processes={} nodes_added={} status_patches={} deletes={} containers_started={} events={} api_retries={}",
                    s.pods_seen.load(Ordering::Relaxed),
                    ctx.logs.len(),
                    ctx.procs.snapshot().len(),
                    s.nodes_added.load(Ordering::Relaxed),
                    s.status_patches.load(Ordering::Relaxed),
                    s.deletes.load(Ordering::Relaxed),
                    s.containers_started.load(Ordering::Relaxed),
                    ctx.events.written.load(Ordering::Relaxed),
                    s.api_retries.load(Ordering::Relaxed),
                );
                if line != last {
                    tracing::info!("stats {line}");
                    last = line;
                }
            }
        });
    }
    if let Some(d) = &cli.state_dir {
        std::fs::write(d.join("port"), format!("{port}\n"))?;
        std::fs::write(d.join("pid"), format!("{}\n", std::process::id()))?;
    }
    tracing::info!(node = %cli.node_name, port, "ready");
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "fake-kubelet ready node={} port={}",
            cli.node_name, port
        )?;
        out.flush()?;
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
    shutdown_processes(&ctx).await;
    if cli.delete_node_on_exit {
        node::delete(&ctx).await;
    }
    Ok(())
}
