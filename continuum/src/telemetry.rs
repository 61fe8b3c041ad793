//! Tracing setup: plain or JSON lines on stderr, filtered by `RUST_LOG` (default
//! [`DEFAULT_FILTER`]).

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The filter without `RUST_LOG`: openraft's own lines are its election and replication chatter
/// (every vote at `info`, a peer not listening yet as `ERROR` at each start); what matters to an
/// operator the lease crate logs itself (renewals failing, a lease lost, the node's state), and
/// raft health is in the status and the metrics. `RUST_LOG=info,openraft=info` shows them.
pub const DEFAULT_FILTER: &str = "info,openraft=off";

/// Whether log lines get ANSI colours: only for a person at a terminal, and never when
/// `NO_COLOR` is set to anything non-empty (no-color.org). Log files, pipes and journald get
/// plain text.
pub fn ansi_wanted(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Installs the global subscriber. Logs go to stderr so command output on stdout stays clean.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = ansi_wanted(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(ansi_wanted(true, None));
        assert!(ansi_wanted(true, Some(OsStr::new(""))), "an empty NO_COLOR does not count");
        assert!(!ansi_wanted(true, Some(OsStr::new("1"))));
        assert!(!ansi_wanted(false, None), "a pipe or a log file gets no escape codes");
    }
}
