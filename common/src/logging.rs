//! Process-wide `tracing` setup.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: human-readable lines on stderr, or JSON lines when
/// `json` is set. The level comes from `RUST_LOG` (default `info`). Calling it twice is
/// harmless (the second call does nothing), which keeps tests simple.
pub fn init(json: bool) {
    init_with_default(json, "info");
}

/// Like [`init`], with `default` as the level when `RUST_LOG` is unset (administrative
/// commands use `warn`, so their output is only what they print).
pub fn init_with_default(json: bool, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
