//! Logging: structured entries to the journal when systemd runs us, plain stderr otherwise.
//! Default level: WARN, INFO for firstboot (its steps are the point); RUST_LOG or -v override.

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls do nothing.
pub fn init(verbose: u8, chatty: bool) {
    let default = match (verbose, chatty) {
        (0, false) => "warn",
        (0, true) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // JOURNAL_STREAM is set by systemd when stderr goes to the journal.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_syslog_identifier("regimage".into()))
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .without_time()
                .with_target(false)
                .with_writer(std::io::stderr),
        )
        .try_init();
}
