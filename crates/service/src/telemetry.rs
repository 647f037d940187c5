//! Logging to stdout: human-readable by default, JSON when asked; spans
//! exported over OTLP when tracing is on.

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected text or json"
            )),
        }
    }
}

/// Whether text logs may carry terminal colour codes: only when stdout is
/// a terminal and `NO_COLOR` is unset (never into files or pipes).
fn colours(stdout_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. `filter` is an `EnvFilter` directive
/// such as `info` or `streambus_gateway=debug,info`; `RUST_LOG` wins when set.
/// With `tracer`, spans are exported too (see [`crate::trace`]), and log
/// lines inside a traced span carry its `trace_id` and `span_id`.
pub fn init(format: LogFormat, filter: &str, tracer: Option<&crate::trace::Tracer>) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let ansi = colours(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(tracer.map(|t| t.layer()));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stdout);
    let result = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_current_span(true))
            .try_init(),
    };
    // Already installed (tests, or several roles in one process): keep it.
    let _ = result;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some("".into())));
        assert!(!colours(true, Some("1".into())));
        assert!(!colours(false, None));
    }
}
