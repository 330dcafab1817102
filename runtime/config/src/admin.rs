//! `[admin]`: the admin listener, as written (`RawAdmin`), validated and
//! typed (`AdminConfig`). Its token is a secret (see [`crate::secret`]): a
//! `token_env` is read, and the checks on its value made, by
//! [`crate::Config::read_secrets`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ConfigError;
use crate::secret::{SecretSetting, SecretSource};

/// Default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
    token_env: Option<String>,
    #[serde(default)]
    protect_metrics: bool,
    data_dir: Option<PathBuf>,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Its address (loopback by default).
    pub listen: SocketAddr,
    /// The bearer token protecting it, if any: where it comes from and,
    /// once [`crate::Config::read_secrets`] has run, its value.
    pub token: Option<SecretSetting>,
    /// Whether `/metrics` needs the token too.
    pub protect_metrics: bool,
    /// Where changes made through the API are kept across restarts.
    pub data_dir: Option<PathBuf>,
}

/// Validates `[admin]`; problems go to `errors` with their key paths.
pub(crate) fn validate(a: RawAdmin, base: &Path, errors: &mut Vec<ConfigError>) -> AdminConfig {
    let text = a.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let listen = text.parse::<SocketAddr>().unwrap_or_else(|e| {
        errors.push(ConfigError::new(
            "admin.listen",
            format!("{text:?} is not an address ({e})"),
        ));
        SocketAddr::from(([127, 0, 0, 1], 9901))
    });
    // Only where the token comes from: an environment variable is read by
    // `read_secrets`, which also makes the checks that need its value.
    let token = match (a.token, a.token_env) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(
                "admin",
                "give `token` or `token_env`, not both",
            ));
            None
        }
        (Some(t), None) => Some(SecretSetting::literal(t)),
        (None, Some(var)) => Some(SecretSetting::unread(SecretSource::Env(var))),
        (None, None) => None,
    };
    check_token(listen, token.as_ref(), errors);
    AdminConfig {
        listen,
        token,
        protect_metrics: a.protect_metrics,
        data_dir: a.data_dir.as_ref().map(|d| base.join(d)),
    }
}

/// The checks on the token that need its value: its length, and that a
/// listener others can reach has one. A token that is not read yet is left
/// for [`read_secrets`].
fn check_token(listen: SocketAddr, token: Option<&SecretSetting>, errors: &mut Vec<ConfigError>) {
    if token.is_some_and(|t| t.expose().is_none()) {
        return;
    }
    let token = token.and_then(SecretSetting::expose);
    if token.is_some_and(|t| t.len() < 16) {
        errors.push(ConfigError::new(
            "admin.token",
            "must be at least 16 characters",
        ));
    }
    if token.is_none() && !listen.ip().is_loopback() {
        errors.push(ConfigError::new(
            "admin.listen",
            format!("{listen} is not a loopback address; refusing to expose the admin API without a token (set admin.token or admin.token_env)"),
        ));
    }
}

/// Reads the token from its environment variable, if it comes from one, and
/// makes the checks that need its value; problems go to `errors` with their
/// key paths.
pub(crate) fn read_secrets(admin: &mut AdminConfig, errors: &mut Vec<ConfigError>) {
    let Some(token) = admin.token.as_mut() else {
        return;
    };
    if token.expose().is_some() {
        return;
    }
    match token.read() {
        Ok(()) => check_token(admin.listen, Some(token), errors),
        Err(m) => {
            errors.push(ConfigError::new("admin.token_env", m));
            check_token(admin.listen, None, errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (AdminConfig, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let admin = validate(
            toml::from_str(text).unwrap(),
            Path::new("/srv"),
            &mut errors,
        );
        (admin, errors)
    }

    #[test]
    fn loopback_without_a_token_is_fine() {
        let (a, errors) = check("data_dir = \"state\"");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(a.listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
        assert!(a.token.is_none());
        assert!(!a.protect_metrics);
        assert_eq!(a.data_dir.as_deref(), Some(Path::new("/srv/state")));
    }

    #[test]
    fn a_public_listener_needs_a_long_enough_token() {
        let (_, errors) = check("listen = \"0.0.0.0:9901\"");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "admin.listen");
        assert!(
            errors[0]
                .message
                .starts_with("0.0.0.0:9901 is not a loopback address")
        );
        let (_, errors) = check("listen = \"0.0.0.0:9901\"\ntoken = \"short\"");
        assert_eq!(
            errors,
            [ConfigError::new(
                "admin.token",
                "must be at least 16 characters"
            )]
        );
        let (a, errors) = check("listen = \"0.0.0.0:9901\"\ntoken = \"0123456789abcdef\"");
        assert!(errors.is_empty());
        assert_eq!(a.token, Some(SecretSetting::literal("0123456789abcdef")));
    }

    #[test]
    fn token_and_token_env_together_are_refused() {
        let (_, errors) = check("token = \"0123456789abcdef\"\ntoken_env = \"X\"");
        assert_eq!(
            errors,
            [ConfigError::new(
                "admin",
                "give `token` or `token_env`, not both"
            )]
        );
    }
}
