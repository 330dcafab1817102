//! `basic-auth`: HTTP Basic authentication (RFC 7617) against password
//! digests from the config; 401 with `WWW-Authenticate: Basic` otherwise.
//!
//! ```toml
//! [[routes.filters]]
//! name = "basic-auth"
//! config = { realm = "ops", users = { alice = "sha256:3f9c…:9b1d…" } }
//! ```
//! - `users` (required, at least one): user name → password digest, either
//!   `"sha256:<hex>"` (SHA-256 of the password) or `"sha256:<salt>:<hex>"`
//!   (SHA-256 of the salt followed by the password; prefer this). Plain
//!   passwords are refused, so configs never hold them.
//!   `printf %s "$SALT$PASSWORD" | sha256sum` makes one.
//! - `users_var`: also read `user:digest` lines from this `config` value
//!   (e.g. a file granted in `[filters.basic-auth.vars]`).
//! - `realm` (default `"wasmgate"`): the realm in the challenge.
//! - `user_header` (default `"x-authenticated-user"`): set to the user name on
//!   the way upstream (any such header from the client is replaced).
//! - `hide_credentials` (default `true`): remove `Authorization` before
//!   forwarding.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use wasmgate_sdk::{
    Filter, FilterInfo, OnRequest, Request, RequestEdits, Response, config, export_filter,
    parse_config,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    users: BTreeMap<String, String>,
    users_var: Option<String>,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default = "default_user_header")]
    user_header: String,
    #[serde(default = "yes")]
    hide_credentials: bool,
}

fn default_realm() -> String {
    "wasmgate".into()
}
fn default_user_header() -> String {
    "x-authenticated-user".into()
}
fn yes() -> bool {
    true
}

struct Credential {
    salt: Vec<u8>,
    digest: [u8; 32],
}

struct BasicAuth {
    users: BTreeMap<String, Credential>,
    challenge: String,
    user_header: String,
    hide_credentials: bool,
}

fn parse_credential(user: &str, spec: &str) -> Result<Credential, String> {
    let rest = spec.strip_prefix("sha256:").ok_or_else(|| {
        format!(
            "user {user:?}: give \"sha256:<hex>\" or \"sha256:<salt>:<hex>\", not a plain password"
        )
    })?;
    let (salt, hex) = match rest.rsplit_once(':') {
        Some((salt, hex)) => (salt.as_bytes().to_vec(), hex),
        None => (Vec::new(), rest),
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("user {user:?}: the digest must be 64 hex digits"));
    }
    let mut digest = [0u8; 32];
    for (i, d) in digest.iter_mut().enumerate() {
        *d = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(Credential { salt, digest })
}

/// Equal in constant time for equal lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn challenge(realm: &str) -> String {
    format!(
        "Basic realm=\"{}\", charset=\"UTF-8\"",
        realm.replace(['"', '\\'], "")
    )
}

impl BasicAuth {
    fn unauthorized(&self, message: &str) -> OnRequest {
        OnRequest::respond(
            Response::new(401)
                .with_header("www-authenticate", self.challenge.clone())
                .json(format!(
                    r#"{{"status":401,"code":"unauthorized","message":"{message}"}}"#
                )),
        )
    }

    /// The user the `Authorization` header proves, if any.
    fn verify(&self, authorization: &str) -> Option<&str> {
        let (scheme, token) = authorization.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        // An unknown user costs the same hash as a known one, so timing does
        // not tell which users exist.
        let found = self.users.get_key_value(user);
        let (salt, digest) = found.map_or((&[][..], &[0u8; 32]), |(_, c)| (&c.salt[..], &c.digest));
        let mut h = Sha256::new();
        h.update(salt);
        h.update(password.as_bytes());
        let ok = same(&h.finalize(), digest);
        found.filter(|_| ok).map(|(name, _)| name.as_str())
    }
}

impl Filter for BasicAuth {
    fn new(config_text: &str) -> Result<Self, String> {
        let c: Config = parse_config(config_text)?;
        let mut users = BTreeMap::new();
        for (user, spec) in &c.users {
            users.insert(user.clone(), parse_credential(user, spec)?);
        }
        if let Some(var) = &c.users_var {
            let text = config::get(var)
                .ok_or_else(|| format!("`users_var`: the gateway grants no value {var:?}"))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (user, spec) = line
                    .split_once(':')
                    .ok_or_else(|| format!("`{var}` line {}: expected \"user:digest\"", n + 1))?;
                users.insert(user.to_owned(), parse_credential(user, spec)?);
            }
        }
        if users.is_empty() {
            return Err("`users` (or `users_var`) must give at least one user".into());
        }
        if users.keys().any(|u| u.is_empty() || u.contains(':')) {
            return Err("user names must be non-empty and contain no ':'".into());
        }
        Ok(BasicAuth {
            users,
            challenge: challenge(&c.realm),
            user_header: c.user_header.to_ascii_lowercase(),
            hide_credentials: c.hide_credentials,
        })
    }

    fn info(&self) -> FilterInfo {
        FilterInfo::new().request_headers(["authorization"])
    }

    fn on_request(&self, req: &Request) -> OnRequest {
        let Some(authorization) = req.header("authorization") else {
            return self.unauthorized("credentials required");
        };
        match self.verify(authorization) {
            None => self.unauthorized("invalid credentials"),
            Some(user) => {
                let mut edits = RequestEdits::default().set_header(&self.user_header, user);
                if self.hide_credentials {
                    edits = edits.remove_header("authorization");
                }
                OnRequest::proceed_with(edits)
            }
        }
    }
}

export_filter!(BasicAuth);
