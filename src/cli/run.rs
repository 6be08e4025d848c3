//! `run`: the Kafka service.

use super::Failure;
use crate::config::{Config, LogConfig};
use crate::metrics::Telemetry;
use crate::pipeline::Pipeline;
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The configuration file (YAML). Environment variables
    /// EVENT_SANITIZER__SECTION__KEY override it.
    #[arg(long, short = 'c', value_name = "FILE", env = "EVENT_SANITIZER_CONFIG")]
    config: Option<PathBuf>,
}

/// The audit stream's tracing target.
pub(crate) const AUDIT: &str = "event_sanitizer::audit";

/// Sets up logging: JSON for production, text on a terminal. With
/// `log.audit_file`, the audit stream goes there as JSON lines, every
/// record whatever `log.level` says, and not into the main log.
pub(crate) fn init_logging(log: &LogConfig) -> Result<(), String> {
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match log.format.as_str() {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let separate = log.audit_file.is_some();
    let main_filter = filter.and(filter_fn(move |m| !(separate && m.target() == AUDIT)));
    let main = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .with_filter(main_filter)
            .boxed()
    } else {
        // Colour only on a terminal: a redirected log has no escape codes.
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_filter(main_filter)
            .boxed()
    };
    let audit = match &log.audit_file {
        None => None,
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open `log.audit_file` {}: {e}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_ansi(false)
                    .with_writer(std::sync::Mutex::new(file))
                    .with_filter(filter_fn(|m| m.target() == AUDIT)),
            )
        }
    };
    let _ = tracing_subscriber::registry()
        .with(main)
        .with(audit)
        .try_init();
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once.
pub(crate) async fn signals() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!(
            "signal received: finishing in-flight messages (a second signal exits at once)"
        );
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::warn!(
                "second signal: exiting now; unacknowledged messages will be consumed again"
            );
            std::process::exit(130);
        });
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub(crate) fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let cfg = Config::load(args.config.as_deref()).map_err(|e| Failure::usage(e.to_string()))?;
    init_logging(&cfg.log).map_err(Failure::usage)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("cannot start the runtime: {e}")))?;
    let result = rt.block_on(async move {
        let telemetry = Arc::new(Telemetry::new());
        let pipeline = match Pipeline::new(cfg, telemetry).await {
            Ok(p) => p,
            Err(e) => return Err(Failure::usage(e.to_string())),
        };
        tracing::info!(metrics = %pipeline.http_addr(), "serving /metrics, /healthz, /readyz");
        pipeline
            .run(signals())
            .await
            .map(|_| ExitCode::SUCCESS)
            .map_err(|e| Failure {
                message: e.to_string(),
                code: 1,
            })
    });
    // A client close still blocked on a broker past the shutdown bound is
    // not waited for: what it held is consumed again after the restart.
    rt.shutdown_timeout(Duration::from_millis(200));
    result
}
