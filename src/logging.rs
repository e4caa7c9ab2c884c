//! Log output for the command line and for services: what format, colours or not.
//!
//! - on a terminal: human text with colours (never with `NO_COLOR` set);
//! - redirected to a file or a pipe: the same text without colour codes;
//! - under systemd (`JOURNAL_STREAM` names our stderr): no timestamps (the journal adds its
//!   own), no colours, and a `<N>` syslog priority prefix the journal turns into the level;
//! - `--log-format json`: one JSON object per line for log shippers.
//!
//! [`choose`] makes the decision from plain facts so it is unit-tested; [`init`] reads the
//! facts from the process and installs the subscriber.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Text; journald style under systemd, colours only on a terminal.
    #[default]
    Auto,
    /// Human text with timestamps (colours only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
    /// For the systemd journal: `<N>` priority prefix, no timestamps, no colours.
    Journald,
}

/// What the process looks like from inside.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    pub stderr_is_terminal: bool,
    /// `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
    pub no_color: bool,
    /// `JOURNAL_STREAM` is set and names this process's stderr.
    pub journal_stream: bool,
}

/// The decided output style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Text { ansi: bool },
    Json,
    Journald,
}

/// Picks the output style from the flag and the facts.
pub fn choose(format: LogFormat, facts: Facts) -> Style {
    let ansi = facts.stderr_is_terminal && !facts.no_color;
    match format {
        LogFormat::Json => Style::Json,
        LogFormat::Journald => Style::Journald,
        LogFormat::Text => Style::Text { ansi },
        LogFormat::Auto if facts.journal_stream && !facts.stderr_is_terminal => Style::Journald,
        LogFormat::Auto => Style::Text { ansi },
    }
}

/// The syslog priority the journal reads from a `<N>` line prefix.
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Reads the facts from this process.
pub fn facts() -> Facts {
    Facts {
        stderr_is_terminal: std::io::stderr().is_terminal(),
        no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        journal_stream: std::env::var("JOURNAL_STREAM")
            .ok()
            .is_some_and(|v| journal_stream_is_stderr(&v)),
    }
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`) is our stderr, as systemd recommends checking
/// (a child started from a service inherits the variable but maybe not the stream).
fn journal_stream_is_stderr(value: &str) -> bool {
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.trim().parse::<u64>(), ino.trim().parse::<u64>()) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata("/proc/self/fd/2") {
            Ok(m) => m.dev() == dev && m.ino() == ino,
            // No /proc: trust the variable.
            Err(_) => true,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (dev, ino);
        false
    }
}

/// Installs the global subscriber (`RUST_LOG` filters; default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests) is harmless: `try_init` reports it and we ignore it.
    let _ = match choose(format, facts()) {
        Style::Text { ansi } => builder.with_ansi(ansi).try_init(),
        Style::Json => builder.json().with_ansi(false).try_init(),
        Style::Journald => builder
            .with_ansi(false)
            .event_format(JournaldFormat)
            .try_init(),
    };
}

/// `<N>span{fields}: message key=value` lines: the journal stores N as the priority.
struct JournaldFormat;

impl<S, N> FormatEvent<S, N> for JournaldFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        // The spans the line was written in, as the text format shows them
        // (`ami{server=hub1}: `): they name the line's source.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                match ext.get::<FormattedFields<N>>() {
                    Some(f) if !f.is_empty() => write!(writer, "{}{{{f}}}: ", span.name())?,
                    _ => write!(writer, "{}: ", span.name())?,
                }
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(tty: bool, no_color: bool, journal: bool) -> Facts {
        Facts {
            stderr_is_terminal: tty,
            no_color,
            journal_stream: journal,
        }
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        let auto = LogFormat::Auto;
        assert_eq!(
            choose(auto, facts(true, false, false)),
            Style::Text { ansi: true }
        );
        assert_eq!(
            choose(auto, facts(false, false, false)),
            Style::Text { ansi: false },
            "redirected output gets no colour codes"
        );
        assert_eq!(
            choose(auto, facts(true, true, false)),
            Style::Text { ansi: false },
            "NO_COLOR wins"
        );
        assert_eq!(
            choose(LogFormat::Text, facts(false, false, true)),
            Style::Text { ansi: false }
        );
    }

    #[test]
    fn systemd_journal_gets_its_own_format() {
        assert_eq!(
            choose(LogFormat::Auto, facts(false, false, true)),
            Style::Journald
        );
        assert_eq!(
            choose(LogFormat::Journald, facts(true, false, false)),
            Style::Journald
        );
        assert_eq!(
            choose(LogFormat::Json, facts(false, false, true)),
            Style::Json
        );
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(&Level::ERROR), 3);
        assert_eq!(syslog_priority(&Level::WARN), 4);
        assert_eq!(syslog_priority(&Level::INFO), 6);
        assert_eq!(syslog_priority(&Level::DEBUG), 7);
    }

    #[test]
    fn journal_lines_name_their_span() {
        use std::sync::{Arc, Mutex};
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .event_format(JournaldFormat)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("ami", server = "hub1");
            let _e = span.enter();
            tracing::warn!("[AMI] connection lost");
        });
        let text =
            String::from_utf8_lossy(&buf.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        assert_eq!(text, "<4>ami{server=\"hub1\"}: [AMI] connection lost\n");
    }

    #[test]
    fn malformed_journal_stream_is_not_ours() {
        assert!(!journal_stream_is_stderr(""));
        assert!(!journal_stream_is_stderr("abc"));
        assert!(!journal_stream_is_stderr("1:x"));
        // A well-formed value that is not our stderr's device and inode.
        assert!(!journal_stream_is_stderr("0:0") || std::fs::metadata("/proc").is_err());
    }
}
