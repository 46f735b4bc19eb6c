//! Logging setup: one `tracing` subscriber per process.

use scalestack_config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the process's `tracing` subscriber, writing to stderr.
///
/// `RUST_LOG`, when set, overrides `config.level`. Calling it twice is harmless
/// (the second call keeps the first subscriber), which keeps tests simple.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _already_set = match config.format {
        LogFormat::Text => builder.with_target(false).compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
