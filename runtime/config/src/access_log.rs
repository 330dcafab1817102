//! `[access_log]`: where the access log goes, as written (`RawAccessLog`),
//! validated and typed (`AccessLogTarget`).

use std::path::Path;

use serde::Deserialize;

use crate::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    #[serde(default = "yes")]
    enabled: bool,
    path: Option<String>,
}

fn yes() -> bool {
    true
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(std::path::PathBuf),
}

/// Validates `[access_log]`: absent means standard output; `None` is off.
/// Problems go to `errors` with their key paths.
pub(crate) fn validate(
    raw: Option<RawAccessLog>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<AccessLogTarget> {
    match raw {
        None => Some(AccessLogTarget::Stdout),
        Some(a) if !a.enabled => {
            if a.path.is_some() {
                errors.push(ConfigError::new(
                    "access_log.path",
                    "is set but access_log.enabled is false",
                ));
            }
            None
        }
        Some(a) => match a.path.as_deref() {
            None | Some("stdout") | Some("-") => Some(AccessLogTarget::Stdout),
            Some(p) => Some(AccessLogTarget::File(base.join(p))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: Option<&str>) -> (Option<AccessLogTarget>, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let raw = text.map(|t| toml::from_str(t).unwrap());
        let target = validate(raw, Path::new("/var/gw"), &mut errors);
        (target, errors)
    }

    #[test]
    fn targets() {
        let stdout = (Some(AccessLogTarget::Stdout), Vec::new());
        assert_eq!(check(None), stdout);
        assert_eq!(check(Some("")), stdout);
        assert_eq!(check(Some("path = \"-\"")), stdout);
        assert_eq!(check(Some("path = \"stdout\"")), stdout);
        assert_eq!(
            check(Some("path = \"access.log\"")),
            (
                Some(AccessLogTarget::File("/var/gw/access.log".into())),
                Vec::new()
            )
        );
        assert_eq!(check(Some("enabled = false")), (None, Vec::new()));
    }

    #[test]
    fn a_path_when_disabled_is_refused() {
        let (_, errors) = check(Some("enabled = false\npath = \"a.log\""));
        assert_eq!(
            errors,
            [ConfigError::new(
                "access_log.path",
                "is set but access_log.enabled is false"
            )]
        );
    }
}
