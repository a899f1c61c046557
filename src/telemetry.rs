//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`). Log events
//! carry structured fields and never personal data (ids are masked by their types).

use tracing_subscriber::EnvFilter;

/// The default filter: `info` (refused TLS handshakes are logged at warn by
/// `connections`, with their reason).
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber once; later calls are no-ops.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colour only on a terminal: a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}
