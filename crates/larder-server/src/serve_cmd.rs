//! `larder serve`: load the config (or the embedded defaults), start, bind,
//! serve until SIGTERM/SIGINT.
//!
//! `main` owns the signals; [`larder_server::serve::run`] takes the bound
//! listener and the shutdown future (mini-redis' shape), so tests can run
//! the same loop without signals.

use anyhow::{Context as _, Result};
use larder_server::config::Config;
use larder_server::serve;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Options of `larder serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The config file (TOML; see larder.example.toml). Without one, the
    /// embedded defaults: SQLite `larder.db`, Redis at 127.0.0.1:6379 if it
    /// answers (else memory://), a sample `users` entity.
    #[arg(long, env = "LARDER_CONFIG")]
    config: Option<PathBuf>,
    /// The address to listen on, overriding the config's `listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Serve the Redis protocol on this address, overriding `[resp] listen`.
    #[arg(long, value_name = "ADDR")]
    resp: Option<String>,
}

pub(crate) async fn run(args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            let (config, note) = serve::default_config(Path::new("larder.db")).await?;
            eprintln!("larder: {note}");
            config
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(resp) = args.resp {
        config.resp.listen = Some(resp);
    }
    let addr = config.listen_addr()?;
    serve::check_listen(&config, serve::token_of(&config).is_some())?;
    larder_server::resp::check_listen(&config, serve::token_of(&config).is_some())?;
    let state = serve::start(config).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%local, "listening");
    // The line tests and scripts wait for: everything is in place now.
    let mut out = std::io::stdout();
    let resp = larder_server::resp::bind(state.config()).await?;
    if let Some(resp) = &resp {
        let local = resp.local_addr().context("reading the bound address")?;
        tracing::info!(%local, "listening (Redis protocol)");
        let _ = writeln!(out, "larder: listening on redis://{local}");
    }
    let _ = writeln!(out, "larder: listening on http://{local}");
    let _ = out.flush();
    serve::run_with_resp(listener, resp, state, shutdown_signal()).await?;
    eprintln!("larder: stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (ctrl-c).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
