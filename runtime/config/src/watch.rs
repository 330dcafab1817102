//! `[watch]`: reloading when the config file or a filter's module file
//! changes, as written (`RawWatch`), validated and typed (`WatchConfig`).

use std::time::Duration;

use serde::Deserialize;

use crate::{ConfigError, HumanDuration};

/// Default quiet time before a changed watched file is read.
pub const DEFAULT_WATCH_DEBOUNCE: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWatch {
    #[serde(default)]
    enabled: bool,
    debounce: Option<HumanDuration>,
}

/// `[watch]`: reload when the config file or a filter's module file
/// changes. A top-level section rather than part of `[server]`: it is about
/// how changes reach the gateway (like SIGHUP and the management API), not
/// about the listener. Read at start only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// Watch the files at all.
    pub enabled: bool,
    /// Quiet time after the last change to a file before it is read.
    pub debounce: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            enabled: false,
            debounce: DEFAULT_WATCH_DEBOUNCE,
        }
    }
}

/// Validates `[watch]`; problems go to `errors` with their key paths.
pub(crate) fn validate(raw: RawWatch, errors: &mut Vec<ConfigError>) -> WatchConfig {
    WatchConfig {
        enabled: raw.enabled,
        debounce: match raw.debounce {
            None => DEFAULT_WATCH_DEBOUNCE,
            Some(HumanDuration(d))
                if d < Duration::from_millis(10) || d > Duration::from_secs(60) =>
            {
                errors.push(ConfigError::new(
                    "watch.debounce",
                    format!(
                        "must be between 10ms and 1m, got {}",
                        humantime::format_duration(d)
                    ),
                ));
                DEFAULT_WATCH_DEBOUNCE
            }
            Some(HumanDuration(d)) => d,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (WatchConfig, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let watch = validate(toml::from_str(text).unwrap(), &mut errors);
        (watch, errors)
    }

    #[test]
    fn off_by_default() {
        assert_eq!(check(""), (WatchConfig::default(), Vec::new()));
    }

    #[test]
    fn debounce_between_10ms_and_a_minute() {
        let (w, errors) = check("enabled = true\ndebounce = \"10ms\"");
        assert!(errors.is_empty());
        assert!(w.enabled);
        assert_eq!(w.debounce, Duration::from_millis(10));
        assert_eq!(
            check("debounce = \"1m\"").0.debounce,
            Duration::from_secs(60)
        );
        for bad in ["9ms", "1m 1s"] {
            let (w, errors) = check(&format!("debounce = {bad:?}"));
            assert_eq!(w.debounce, DEFAULT_WATCH_DEBOUNCE);
            assert_eq!(
                errors,
                [ConfigError::new(
                    "watch.debounce",
                    format!("must be between 10ms and 1m, got {bad}")
                )]
            );
        }
    }
}
