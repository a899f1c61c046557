//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as plain text
//! (coloured on a terminal only) or as JSON, one object per line (`[logging] format`).
//! Log events carry structured fields and never personal data (ids are masked by their
//! types; a test runs the gateway at `trace` and searches its output).

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// The default filter: `info` (refused TLS handshakes are logged at warn by
/// `connections`, with their reason).
pub const DEFAULT_FILTER: &str = "info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`),
    /// `target`, for log collectors (Loki, Elasticsearch, Splunk).
    Json,
}

/// The logging configuration (`[logging]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Installs the global subscriber once, as plain text; later calls are no-ops.
pub fn init() {
    init_as(LogFormat::Text);
}

/// Installs the global subscriber once, in `format`; later calls are no-ops.
pub fn init_as(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => {
            // Colour only on a terminal: a log file gets plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).with_target(false).try_init()
        }
    };
}
