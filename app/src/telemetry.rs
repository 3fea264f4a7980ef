//! Logging: JSON lines (production) or human-readable (a terminal in development), the level
//! from `log.level` unless `RUST_LOG` is set.

use std::io::IsTerminal;

use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Libraries that log through `log` (bridged into tracing) at a level below an operator's
/// interest: the embedded broker logs every refused connection at INFO (ddms logs those
/// itself, throttled), rustls warns about every client that sends an IP address as SNI.
/// Naming one of them in the filter overrides its default here.
const QUIET_LIBRARIES: &[(&str, &str)] = &[("rmqtt", "warn"), ("rustls", "error")];

fn with_quiet_libraries(directives: &str) -> String {
    let mut filter = directives.to_string();
    for (target, level) in QUIET_LIBRARIES {
        if !directives.contains(target) {
            filter.push_str(&format!(",{target}={level}"));
        }
    }
    filter
}

pub fn init(config: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(with_quiet_libraries(&v)).ok())
        .unwrap_or_else(|| EnvFilter::new(with_quiet_libraries(&config.log.level)));
    let format = config.log_format(std::io::stdout().is_terminal());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_writer(std::io::stdout);
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.with_target(false).try_init(),
    };
}

/// Logging for one-shot commands before the configuration is known: errors only, to stderr.
pub fn init_minimal() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Logging for `ddms release`: its progress at `info`, human-readable, to stderr (stdout
/// carries the JSON result). `RUST_LOG` wins when set.
pub fn init_progress() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new("ddms=info,warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::with_quiet_libraries;

    #[test]
    fn noisy_libraries_are_quiet_unless_named() {
        assert_eq!(with_quiet_libraries("info"), "info,rmqtt=warn,rustls=error");
        assert_eq!(
            with_quiet_libraries("debug,rmqtt=debug"),
            "debug,rmqtt=debug,rustls=error"
        );
    }
}
