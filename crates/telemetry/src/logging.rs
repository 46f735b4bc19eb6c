//! Logging setup: one `tracing` subscriber per process.

use std::io::IsTerminal;

use scalestack_config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Set by `scalestack up` on its children when its own stderr is a terminal:
/// their output is piped through the supervisor, but ends on that terminal.
pub const COLOR_ENV: &str = "SCALESTACK_LOG_COLOR";

/// Whether log lines should carry ANSI colours.
pub fn use_color() -> bool {
    match std::env::var(COLOR_ENV) {
        Ok(v) => v == "1",
        Err(_) => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

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
        .with_writer(std::io::stderr)
        .with_ansi(use_color());
    let _already_set = match config.format {
        LogFormat::Text => builder.with_target(false).compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
