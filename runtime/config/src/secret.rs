//! Secrets in the config: the admin token and filters' `vars`.
//!
//! Validation never reads a secret. It records where each one comes from
//! ([`SecretSource`]: written in the config, an environment variable, or a
//! file) in a [`SecretSetting`]; a literal's value is known at once, the
//! others are read by the separate step [`crate::Config::read_secrets`].
//! [`crate::Config::parse`] and [`crate::Config::load`] take both steps;
//! [`crate::Config::parse_without_secrets`] takes only the first, so a
//! caller can look at [`crate::Config::secrets`] and decide what a config
//! may read (say, no environment variables or files for a config sent
//! through the management API) before reading anything.
//!
//! The value is a [`Secret`]: compared by value, reached only through
//! [`Secret::expose`], and printed by `Debug` as `<redacted>` (a config's
//! `text`, which may hold literals, is printed by its length).

use std::fmt;
use std::path::{Path, PathBuf};

/// A secret value. Its `Debug` output is `<redacted>`, so a config printed
/// whole (in a log line, a test failure) does not give it away.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Where a secret's value comes from, as the config says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the config itself.
    Literal,
    /// The gateway process's environment variable of this name.
    Env(String),
    /// This file's contents (resolved against the config's folder), less
    /// one trailing line ending.
    File(PathBuf),
}

/// A secret as configured: where it comes from and, once read, its value.
#[derive(Debug, Clone)]
pub struct SecretSetting {
    source: SecretSource,
    value: Option<Secret>,
}

impl SecretSetting {
    /// A secret written in the config: read already.
    pub fn literal(value: impl Into<String>) -> SecretSetting {
        SecretSetting {
            source: SecretSource::Literal,
            value: Some(Secret::new(value)),
        }
    }

    /// A secret to be read from an environment variable or a file.
    pub fn unread(source: SecretSource) -> SecretSetting {
        SecretSetting {
            source,
            value: None,
        }
    }

    /// Where the value comes from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// The value, once read (a literal's always is).
    pub fn value(&self) -> Option<&Secret> {
        self.value.as_ref()
    }

    /// The value's text, once read.
    pub fn expose(&self) -> Option<&str> {
        self.value.as_ref().map(Secret::expose)
    }

    /// Reads the value from its source, unless it is known already; on
    /// failure returns what went wrong, in the config's words.
    pub(crate) fn read(&mut self) -> Result<(), String> {
        if self.value.is_some() {
            return Ok(());
        }
        let value = match &self.source {
            SecretSource::Literal => return Ok(()),
            SecretSource::Env(var) => std::env::var(var)
                .map_err(|_| format!("the environment variable {var} is not set"))?,
            SecretSource::File(path) => read_file(path)?,
        };
        self.value = Some(Secret(value));
        Ok(())
    }
}

/// Equal when both values are known and equal, so a secret that moved (from
/// the config into a file, say) but did not change compares equal; before
/// they are read, equal when they come from the same place.
impl PartialEq for SecretSetting {
    fn eq(&self, other: &Self) -> bool {
        match (&self.value, &other.value) {
            (Some(a), Some(b)) => a == b,
            _ => self.source == other.source && self.value == other.value,
        }
    }
}

impl Eq for SecretSetting {}

fn read_file(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        // Secrets files usually end in a newline that is not part of the
        // secret.
        Ok(v) => Ok(v
            .strip_suffix('\n')
            .map_or(v.as_str(), |v| v.strip_suffix('\r').unwrap_or(v))
            .to_owned()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wasmgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn debug_output_redacts_the_value() {
        let s = SecretSetting::literal("hunter2-hunter2-hunter2");
        let shown = format!("{s:?} {:?} {s:#?}", s.value());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn a_literal_is_read_already() {
        let mut s = SecretSetting::literal("abc");
        assert_eq!(s.expose(), Some("abc"));
        assert_eq!(s.source(), &SecretSource::Literal);
        assert_eq!(s.read(), Ok(()));
        assert_eq!(s.expose(), Some("abc"));
    }

    #[test]
    fn files_lose_one_line_ending() {
        for (text, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("two\n\n", "two\n"),
        ] {
            let path = temp("secret", text);
            let mut s = SecretSetting::unread(SecretSource::File(path));
            assert_eq!(s.expose(), None);
            s.read().unwrap();
            assert_eq!(s.expose(), Some(want));
        }
    }

    #[test]
    fn unreadable_sources_say_why() {
        let mut s = SecretSetting::unread(SecretSource::Env(
            "WASMGATE_TEST_SURELY_NOT_SET_1234".into(),
        ));
        assert_eq!(
            s.read(),
            Err("the environment variable WASMGATE_TEST_SURELY_NOT_SET_1234 is not set".into())
        );
        let mut s = SecretSetting::unread(SecretSource::File("/nonexistent/secret".into()));
        let e = s.read().unwrap_err();
        assert!(e.starts_with("cannot read /nonexistent/secret: "), "{e}");
        assert_eq!(s.expose(), None);
    }

    #[test]
    fn read_secrets_compare_by_value_unread_ones_by_source() {
        let path = temp("same", "v\n");
        let mut from_file = SecretSetting::unread(SecretSource::File(path.clone()));
        assert_ne!(from_file, SecretSetting::literal("v"));
        assert_eq!(
            from_file,
            SecretSetting::unread(SecretSource::File(path.clone()))
        );
        from_file.read().unwrap();
        assert_eq!(from_file, SecretSetting::literal("v"));
        assert_ne!(from_file, SecretSetting::literal("w"));
    }
}
