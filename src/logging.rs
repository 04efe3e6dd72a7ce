//! Logging: structured entries to the journal when systemd runs us, plain stderr otherwise.
//! Default level: WARN, INFO for firstboot (its steps are the point); RUST_LOG or -v override.
//! Colour only when stderr is a terminal: a pipe, a file or the journal get plain text.

use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

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
        .with(text_layer(std::io::stderr, &std::io::stderr()))
        .try_init();
}

/// Plain lines to `writer`, coloured only if `stream` (where they end up) is a terminal.
fn text_layer<S, W>(writer: W, stream: &impl IsTerminal) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .without_time()
        .with_target(false)
        .with_ansi(stream.is_terminal())
        .with_writer(writer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Seek as _};
    use std::sync::{Arc, Mutex};

    #[test]
    fn no_colour_codes_when_the_output_is_not_a_terminal() {
        // A file stands for a pipe or a log: not a terminal.
        let mut file = tempfile::tempfile().unwrap();
        let shared = Arc::new(Mutex::new(file.try_clone().unwrap()));
        let writer = move || SharedFile(Arc::clone(&shared));
        let subscriber = tracing_subscriber::registry().with(text_layer(writer, &file));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(step = "pki", "something to see");
        });
        let mut text = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut text).unwrap();
        assert!(text.contains("something to see"), "{text:?}");
        assert!(!text.contains('\x1b'), "escape codes in {text:?}");
    }

    struct SharedFile(Arc<Mutex<std::fs::File>>);

    impl std::io::Write for SharedFile {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.lock().unwrap().flush()
        }
    }
}
