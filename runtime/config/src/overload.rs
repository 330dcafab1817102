//! `[overload]`: when the gateway sheds load, as written (`RawOverload`),
//! validated and typed (`OverloadConfig`).

use std::time::Duration;

use serde::Deserialize;

use crate::{ConfigError, HumanDuration, HumanSize};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOverload {
    max_memory: Option<HumanSize>,
    max_open_files_percent: Option<u8>,
    check_interval: Option<HumanDuration>,
}

/// `[overload]` as validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadConfig {
    /// Resident memory (bytes) past which requests are shed; `None`: derive
    /// from the cgroup limit, or no limit.
    pub max_memory: Option<u64>,
    /// Percent of the soft open-files limit past which requests are shed
    /// (0: off).
    pub max_open_files_percent: u8,
    /// How often usage is sampled.
    pub check_interval: Duration,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        OverloadConfig {
            max_memory: None,
            max_open_files_percent: 90,
            check_interval: Duration::from_millis(250),
        }
    }
}

/// Validates `[overload]` (absent: every default); problems go to `errors`
/// with their key paths.
pub(crate) fn validate(raw: Option<RawOverload>, errors: &mut Vec<ConfigError>) -> OverloadConfig {
    let mut overload = OverloadConfig::default();
    let Some(o) = raw else {
        return overload;
    };
    if let Some(HumanSize(n)) = o.max_memory {
        if n < 1 << 20 {
            errors.push(ConfigError::new(
                "overload.max_memory",
                format!("must be at least 1MiB, got {n} bytes"),
            ));
        }
        overload.max_memory = Some(n);
    }
    if let Some(p) = o.max_open_files_percent {
        if p > 100 {
            errors.push(ConfigError::new(
                "overload.max_open_files_percent",
                format!("is a percentage (0 to 100), got {p}"),
            ));
        }
        overload.max_open_files_percent = p;
    }
    if let Some(HumanDuration(d)) = o.check_interval {
        if d < Duration::from_millis(10) {
            errors.push(ConfigError::new(
                "overload.check_interval",
                "must be at least 10ms",
            ));
        }
        overload.check_interval = d;
    }
    overload
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (OverloadConfig, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let o = validate(Some(toml::from_str(text).unwrap()), &mut errors);
        (o, errors)
    }

    #[test]
    fn absent_or_empty_is_the_default() {
        let mut errors = Vec::new();
        assert_eq!(validate(None, &mut errors), OverloadConfig::default());
        assert_eq!(check(""), (OverloadConfig::default(), Vec::new()));
    }

    #[test]
    fn values_are_taken_and_checked() {
        let (o, errors) =
            check("max_memory = \"512MiB\"\nmax_open_files_percent = 0\ncheck_interval = \"1s\"");
        assert!(errors.is_empty());
        assert_eq!(
            o,
            OverloadConfig {
                max_memory: Some(512 << 20),
                max_open_files_percent: 0,
                check_interval: Duration::from_secs(1),
            }
        );
        let (_, errors) =
            check("max_memory = 1000\nmax_open_files_percent = 101\ncheck_interval = \"9ms\"");
        assert_eq!(
            errors,
            [
                ConfigError::new(
                    "overload.max_memory",
                    "must be at least 1MiB, got 1000 bytes"
                ),
                ConfigError::new(
                    "overload.max_open_files_percent",
                    "is a percentage (0 to 100), got 101"
                ),
                ConfigError::new("overload.check_interval", "must be at least 10ms"),
            ]
        );
    }
}
