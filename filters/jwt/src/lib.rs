//! `jwt`: verifies a JSON Web Token (JWS compact form, RFC 7515/7519) signed
//! with HS256, RS256 or ES256, checks its time, issuer, audience, scopes and
//! claims, and passes selected claims upstream as headers. Refuses with 401
//! (no, bad or expired token) or 403 (valid token, not enough rights) and an
//! RFC 6750 `WWW-Authenticate: Bearer` challenge.
//!
//! ```toml
//! [filters.jwt]
//! path = "jwt.wasm"
//! vars = { jwks = { file = "jwks.json" }, hs_secret = { env = "JWT_SECRET" } }
//!
//! [[routes.filters]]
//! name = "jwt"
//! config = { jwks_var = "jwks", issuer = "https://idp.example.com", audiences = ["orders"], scopes = ["orders:read"], claims_to_headers = { sub = "x-jwt-sub" } }
//! ```
//!
//! Keys (at least one, from any mix of these; every key is parsed when the
//! config loads, so a bad one rejects the config with a message naming it):
//! - `keys`: a list of `{ kid?, alg, secret_var | pem | pem_var }`. `alg` is
//!   `"HS256"`, `"RS256"` or `"ES256"`. HS256 takes its secret (at least 32
//!   bytes, RFC 7518 §3.2) from the `vars` value named by `secret_var`; a
//!   secret is never written in route config. RS256 and ES256 take an SPKI
//!   public key PEM (`-----BEGIN PUBLIC KEY-----`; RS256 also accepts
//!   `-----BEGIN RSA PUBLIC KEY-----`) inline in `pem` or from the `vars`
//!   value named by `pem_var`. RSA keys must have at least 2048 bits.
//! - `jwks_var`: the `vars` value holding a JWKS document (`{"keys": [...]}`).
//!   `RSA` keys serve RS256, `EC` keys on `P-256` serve ES256, `oct` keys
//!   serve HS256; keys with another `alg`, another curve, or `use` other than
//!   `"sig"` are skipped, so an identity provider's whole JWKS can be used.
//!
//! Token: from `header` (default `authorization`, scheme `Bearer`, matched
//! case-insensitively; another header may carry the bare token or
//! `Bearer <token>`), else from the cookie named `cookie` (optional).
//!
//! Checks, in order (the first that fails answers):
//! - the token is three base64url parts; its header's `alg` is one that a
//!   configured key has (`none` never is), and it has no `crit`;
//! - the signature verifies with a key of that `alg`, picked by `kid` when the
//!   token names one (keys without a `kid` are tried too); an RSA key is never
//!   used as an HMAC secret, whatever the token says;
//! - time, against the moment the gateway received the request, allowing
//!   `clock_skew` seconds (default 60): `exp` (required unless
//!   `require_exp = false`) not passed, `nbf` reached; with `max_lifetime`
//!   (seconds), `iat` and `exp` are required and `exp - iat` may not exceed it;
//! - `issuer` (a string or a list): `iss` must be one of them;
//! - `audiences` (a string or a list): `aud` (a string or a list) must name
//!   one of them; without `audiences`, `aud` is not checked;
//!   these answer 401 `invalid_token`;
//! - `scopes`: every one must be in the token's `scope` (space-separated) or
//!   `scp` (a list);
//! - `claims`: claim name → a value or a list of accepted values; the claim
//!   (or, if it is a list, one of its elements) must be one of them;
//!   these answer 403 `insufficient_scope`.
//!
//! On success: `claims_to_headers` (claim → header name) sets each header to
//! the claim (strings as they are, numbers and booleans as JSON, lists joined
//! with `,`); these headers are always removed from the client's request
//! first, so a client cannot forge them. `hide_credentials` (default `false`)
//! removes the token (the header, or just the cookie) before forwarding.
//! `realm` (default `"wasmgate"`) names the realm in the challenge.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use p256::pkcs8::DecodePublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};
use sha2::Sha256;
use wasmgate_sdk::{
    Filter, FilterInfo, OnRequest, Request, RequestEdits, Response, config, crypto, export_filter,
    log, parse_config,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    keys: Vec<KeyConfig>,
    jwks_var: Option<String>,
    #[serde(default = "default_header")]
    header: String,
    cookie: Option<String>,
    #[serde(default = "default_realm")]
    realm: String,
    issuer: Option<Value>,
    audiences: Option<Value>,
    #[serde(default = "default_clock_skew")]
    clock_skew: u32,
    #[serde(default = "yes")]
    require_exp: bool,
    max_lifetime: Option<u64>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: BTreeMap<String, Value>,
    #[serde(default)]
    claims_to_headers: BTreeMap<String, String>,
    #[serde(default)]
    hide_credentials: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    kid: Option<String>,
    alg: String,
    secret_var: Option<String>,
    pem: Option<String>,
    pem_var: Option<String>,
    /// Only to refuse it with a useful message: secrets come from `vars`.
    secret: Option<IgnoredAny>,
}

fn default_header() -> String {
    "authorization".into()
}
fn default_realm() -> String {
    "wasmgate".into()
}
fn default_clock_skew() -> u32 {
    60
}
fn yes() -> bool {
    true
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Alg {
    Hs256,
    Rs256,
    Es256,
}

impl Alg {
    fn parse(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }
}

/// A parsed key: its type fixes the one algorithm it verifies.
/// RSA and P-256 keys are parsed and checked here, at init, and verified by
/// the host (`wasmgate_sdk::crypto`): the same arithmetic in WebAssembly costs
/// several hundred microseconds per token.
enum Verifier {
    /// Keyed once at init; cloned per verification.
    Hs256(Hmac<Sha256>),
    /// The DER RSAPublicKey (PKCS #1).
    Rs256(Vec<u8>),
    /// The uncompressed SEC1 point.
    Es256(Vec<u8>),
}

impl Verifier {
    fn alg(&self) -> Alg {
        match self {
            Verifier::Hs256(_) => Alg::Hs256,
            Verifier::Rs256(_) => Alg::Rs256,
            Verifier::Es256(_) => Alg::Es256,
        }
    }

    fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match self {
            Verifier::Hs256(mac) => {
                let mut mac = mac.clone();
                mac.update(signing_input);
                // Constant time.
                mac.verify_slice(signature).is_ok()
            }
            // The host checks the signature's length (the modulus size; 64
            // bytes of r || s for ES256) before anything else.
            Verifier::Rs256(der) => crypto::verify_rsa_pkcs1_sha256(der, signing_input, signature),
            Verifier::Es256(point) => {
                crypto::verify_ecdsa_p256_sha256(point, signing_input, signature)
            }
        }
    }
}

struct Key {
    kid: Option<String>,
    verifier: Verifier,
}

fn hs_key(secret: &[u8], what: &str) -> Result<Verifier, String> {
    if secret.len() < 32 {
        return Err(format!(
            "{what}: an HS256 secret must be at least 32 bytes (RFC 7518 section 3.2), this one has {}",
            secret.len()
        ));
    }
    Hmac::<Sha256>::new_from_slice(secret)
        .map(Verifier::Hs256)
        .map_err(|_| format!("{what}: unusable HMAC secret"))
}

fn es_key(key: &p256::ecdsa::VerifyingKey) -> Verifier {
    Verifier::Es256(key.to_sec1_point(false).as_bytes().to_vec())
}

fn rsa_key(key: rsa::PublicKey, what: &str) -> Result<Verifier, String> {
    if key.size() < 256 {
        return Err(format!(
            "{what}: the RSA key has {} bits, RS256 needs at least 2048",
            key.size() * 8
        ));
    }
    let der = key
        .to_pkcs1_der()
        .map_err(|e| format!("{what}: cannot encode the RSA key: {e}"))?;
    Ok(Verifier::Rs256(der.as_bytes().to_vec()))
}

fn pem_key(alg: Alg, pem: &str, what: &str) -> Result<Verifier, String> {
    let pem = pem.trim();
    if pem.contains("PRIVATE KEY-----") {
        return Err(format!(
            "{what}: this is a private key; give the public key (\"-----BEGIN PUBLIC KEY-----\")"
        ));
    }
    if pem.starts_with("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{what}: give the public key (\"-----BEGIN PUBLIC KEY-----\"), not a certificate \
             (`openssl x509 -pubkey -noout` extracts it)"
        ));
    }
    match alg {
        Alg::Rs256 => {
            let key = if pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
                rsa::PublicKey::from_pkcs1_pem(pem).map_err(|e| e.to_string())
            } else {
                rsa::PublicKey::from_public_key_pem(pem).map_err(|e| e.to_string())
            }
            .map_err(|e| {
                format!("{what}: not an RSA public key PEM (\"-----BEGIN PUBLIC KEY-----\"): {e}")
            })?;
            rsa_key(key, what)
        }
        Alg::Es256 => p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
            .map(|k| es_key(&k))
            .map_err(|e| {
                format!("{what}: not a P-256 public key PEM (\"-----BEGIN PUBLIC KEY-----\"): {e}")
            }),
        Alg::Hs256 => Err(format!(
            "{what}: HS256 takes a secret (`secret_var`), not a PEM"
        )),
    }
}

fn var(name: &str, what: &str) -> Result<String, String> {
    config::get(name).ok_or_else(|| format!("{what}: the gateway grants no value {name:?}"))
}

fn configured_key(i: usize, k: KeyConfig) -> Result<Key, String> {
    let what = match &k.kid {
        Some(kid) => format!("keys[{i}] (kid {kid:?})"),
        None => format!("keys[{i}]"),
    };
    if k.secret.is_some() {
        return Err(format!(
            "{what}: give `secret_var`, the name of a `vars` value holding the secret, \
             not the secret itself"
        ));
    }
    if k.kid.as_deref() == Some("") {
        return Err(format!("{what}: `kid` must not be empty"));
    }
    let alg = Alg::parse(&k.alg).ok_or_else(|| {
        format!(
            "{what}: alg {:?} is not supported (give \"HS256\", \"RS256\" or \"ES256\")",
            k.alg
        )
    })?;
    let verifier = match (alg, k.secret_var, k.pem, k.pem_var) {
        (Alg::Hs256, Some(name), None, None) => hs_key(var(&name, &what)?.as_bytes(), &what)?,
        (Alg::Hs256, ..) => {
            return Err(format!(
                "{what}: an HS256 key takes `secret_var` (and no `pem` or `pem_var`)"
            ));
        }
        (_, None, Some(pem), None) => pem_key(alg, &pem, &what)?,
        (_, None, None, Some(name)) => pem_key(alg, &var(&name, &what)?, &what)?,
        _ => {
            return Err(format!(
                "{what}: an {} key takes exactly one of `pem` and `pem_var`",
                k.alg
            ));
        }
    };
    Ok(Key {
        kid: k.kid,
        verifier,
    })
}

/// The keys of a JWKS document that this filter can use.
fn jwks_keys(name: &str, text: &str) -> Result<Vec<Key>, String> {
    let what = format!("`jwks_var` {name:?}");
    let doc: Value =
        serde_json::from_str(text).map_err(|e| format!("{what}: not a JSON document: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{what}: a JWKS is an object with a \"keys\" list"))?;
    let mut keys = Vec::new();
    for (i, jwk) in list.iter().enumerate() {
        let jwk = jwk
            .as_object()
            .ok_or_else(|| format!("{what}: key {i} is not an object"))?;
        let kid = match jwk.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(format!("{what}: key {i}: \"kid\" must be a string")),
        };
        let key_what = match &kid {
            Some(kid) => format!("{what}: key {i} (kid {kid:?})"),
            None => format!("{what}: key {i}"),
        };
        if let Some(verifier) = jwk_key(jwk, &key_what)? {
            keys.push(Key { kid, verifier });
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "{what}: no RS256, ES256 or HS256 signing key in it"
        ));
    }
    Ok(keys)
}

/// One JWK (RFC 7517/7518): `None` for a key this filter does not use.
fn jwk_key(jwk: &Map<String, Value>, what: &str) -> Result<Option<Verifier>, String> {
    let text = |field: &str| match jwk.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(format!("{what}: {field:?} must be a string")),
    };
    let bytes = |field: &str| -> Result<Vec<u8>, String> {
        let value = text(field)?.ok_or_else(|| format!("{what}: {field:?} is missing"))?;
        URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|_| format!("{what}: {field:?} is not base64url"))
    };
    if text("use")?.is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let alg = text("alg")?;
    let verifier = match text("kty")? {
        Some("RSA") if alg.is_none_or(|a| a == "RS256") => {
            let n = rsa::BoxedUint::from_be_slice_vartime(&bytes("n")?);
            let e = rsa::BoxedUint::from_be_slice_vartime(&bytes("e")?);
            let key = rsa::PublicKey::new(n, e)
                .map_err(|e| format!("{what}: not a usable RSA public key: {e}"))?;
            rsa_key(key, what)?
        }
        Some("EC") if alg.is_none_or(|a| a == "ES256") && text("crv")? == Some("P-256") => {
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(format!(
                    "{what}: a P-256 key's \"x\" and \"y\" are 32 bytes each"
                ));
            }
            let mut sec1 = Vec::with_capacity(65);
            sec1.push(4);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                .map_err(|_| format!("{what}: the point is not on P-256"))?;
            es_key(&key)
        }
        Some("oct") if alg.is_none_or(|a| a == "HS256") => hs_key(&bytes("k")?, what)?,
        _ => return Ok(None),
    };
    Ok(Some(verifier))
}

/// A string or a list of strings, each non-empty.
fn strings(field: &str, value: Value) -> Result<Vec<String>, String> {
    let list = match value {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(format!("`{field}`: give a string or a list of strings")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(format!("`{field}`: give a string or a list of strings")),
    };
    if list.is_empty() || list.iter().any(String::is_empty) {
        return Err(format!("`{field}`: give at least one non-empty value"));
    }
    Ok(list)
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn header_name(field: &str, name: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(format!("`{field}`: {name:?} is not a valid header name"));
    }
    Ok(name.to_ascii_lowercase())
}

/// Safe inside a quoted string of a challenge (RFC 6750 section 3).
fn quotable(text: &str) -> String {
    text.chars()
        .filter(|c| matches!(c, ' ' | '!' | '#'..='[' | ']'..='~'))
        .collect()
}

/// Why a request is refused.
enum Refusal {
    /// No token: 401 with a bare challenge (RFC 6750 section 3.1).
    Missing,
    /// More than one token: 400 `invalid_request`.
    Ambiguous,
    /// 401 `invalid_token`.
    Invalid(String),
    /// 403 `insufficient_scope`.
    Forbidden(String),
}

fn invalid(reason: impl Into<String>) -> Refusal {
    Refusal::Invalid(reason.into())
}

/// Where the token came from, to hide it if asked.
enum Source {
    Header,
    Cookie,
}

struct Jwt {
    keys: Vec<Key>,
    header: String,
    cookie: Option<String>,
    realm: String,
    issuers: Option<Vec<String>>,
    audiences: Option<Vec<String>>,
    clock_skew: f64,
    require_exp: bool,
    max_lifetime: Option<f64>,
    scopes: Vec<String>,
    claims: BTreeMap<String, Vec<Value>>,
    claims_to_headers: BTreeMap<String, String>,
    hide_credentials: bool,
}

impl Jwt {
    /// The token the request carries, and where.
    fn token<'r>(&'r self, req: &'r Request) -> Result<(&'r str, Source), Refusal> {
        let mut found = req.header_all(&self.header).filter_map(|value| {
            let value = value.trim();
            let bearer = value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim());
            match bearer {
                Some(token) => Some(token),
                // Another scheme (`Basic`, say) carries no bearer token.
                None if self.header == "authorization" => None,
                None => Some(value),
            }
            .filter(|token| !token.is_empty())
        });
        if let Some(token) = found.next() {
            return match found.next() {
                Some(_) => Err(Refusal::Ambiguous),
                None => Ok((token, Source::Header)),
            };
        }
        let Some(name) = &self.cookie else {
            return Err(Refusal::Missing);
        };
        let mut found = req
            .header_all("cookie")
            .flat_map(|h| h.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim().trim_matches('"'))
            .filter(|v| !v.is_empty());
        match (found.next(), found.next()) {
            (None, _) => Err(Refusal::Missing),
            (Some(token), None) => Ok((token, Source::Cookie)),
            (Some(_), Some(_)) => Err(Refusal::Ambiguous),
        }
    }

    /// The token's claims, if it is genuine, current and meant for this route.
    fn verify(&self, token: &str, now_ms: u64) -> Result<Map<String, Value>, Refusal> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("malformed token"));
        };
        let json_object = |b64: &str| {
            let bytes = URL_SAFE_NO_PAD.decode(b64).ok()?;
            match serde_json::from_slice(&bytes).ok()? {
                Value::Object(map) => Some(map),
                _ => None,
            }
        };
        let header = json_object(header_b64).ok_or_else(|| invalid("malformed token"))?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("malformed token: no alg"))?;
        let alg = Alg::parse(alg_name)
            .filter(|alg| self.keys.iter().any(|k| k.verifier.alg() == *alg))
            .ok_or_else(|| invalid(format!("algorithm {} is not accepted", quotable(alg_name))))?;
        if header.contains_key("crit") {
            return Err(invalid("unsupported critical header parameters"));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(invalid("malformed token: kid is not a string")),
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| invalid("malformed token"))?;
        let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| k.verifier.alg() == alg)
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .peekable();
        if candidates.peek().is_none() {
            return Err(invalid("unknown key id"));
        }
        if !candidates.any(|k| k.verifier.verify(signing_input, &signature)) {
            return Err(invalid("invalid signature"));
        }
        let claims = json_object(payload_b64).ok_or_else(|| invalid("malformed token payload"))?;
        self.check_time(&claims, now_ms as f64 / 1000.0)?;
        self.check_issuer_and_audience(&claims)?;
        self.check_rights(&claims)?;
        Ok(claims)
    }

    fn check_time(&self, claims: &Map<String, Value>, now: f64) -> Result<(), Refusal> {
        let number = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| invalid(format!("{name} claim is not a number"))),
        };
        let (exp, nbf, iat) = (number("exp")?, number("nbf")?, number("iat")?);
        match exp {
            None if self.require_exp => return Err(invalid("token has no exp claim")),
            Some(exp) if now >= exp + self.clock_skew => return Err(invalid("token expired")),
            _ => {}
        }
        if nbf.is_some_and(|nbf| now + self.clock_skew < nbf) {
            return Err(invalid("token not yet valid"));
        }
        if let Some(max) = self.max_lifetime {
            let (Some(exp), Some(iat)) = (exp, iat) else {
                return Err(invalid("token needs iat and exp claims"));
            };
            if iat > now + self.clock_skew {
                return Err(invalid("token issued in the future"));
            }
            if exp - iat > max {
                return Err(invalid("token lifetime exceeds max_lifetime"));
            }
        }
        Ok(())
    }

    fn check_issuer_and_audience(&self, claims: &Map<String, Value>) -> Result<(), Refusal> {
        if let Some(issuers) = &self.issuers {
            match claims.get("iss") {
                None => return Err(invalid("token has no iss claim")),
                Some(Value::String(iss)) if issuers.contains(iss) => {}
                Some(_) => return Err(invalid("issuer not accepted")),
            }
        }
        if let Some(audiences) = &self.audiences {
            let accepted = |v: &Value| v.as_str().is_some_and(|a| audiences.iter().any(|x| x == a));
            match claims.get("aud") {
                None => return Err(invalid("token has no aud claim")),
                Some(Value::Array(list)) if list.iter().any(accepted) => {}
                Some(aud) if accepted(aud) => {}
                Some(_) => return Err(invalid("audience not accepted")),
            }
        }
        Ok(())
    }

    fn check_rights(&self, claims: &Map<String, Value>) -> Result<(), Refusal> {
        if !self.scopes.is_empty() {
            let mut granted = BTreeSet::new();
            for name in ["scope", "scp"] {
                match claims.get(name) {
                    Some(Value::String(s)) => granted.extend(s.split_ascii_whitespace()),
                    Some(Value::Array(list)) => {
                        granted.extend(list.iter().filter_map(Value::as_str));
                    }
                    _ => {}
                }
            }
            let missing: Vec<&str> = self
                .scopes
                .iter()
                .map(String::as_str)
                .filter(|s| !granted.contains(s))
                .collect();
            if !missing.is_empty() {
                return Err(Refusal::Forbidden(format!(
                    "missing scope: {}",
                    missing.join(" ")
                )));
            }
        }
        for (name, accepted) in &self.claims {
            let Some(value) = claims.get(name) else {
                return Err(Refusal::Forbidden(format!("missing claim `{name}`")));
            };
            let ok = match value {
                Value::Array(list) => list.iter().any(|v| accepted.contains(v)),
                v => accepted.contains(v),
            };
            if !ok {
                return Err(Refusal::Forbidden(format!(
                    "claim `{name}` has no accepted value"
                )));
            }
        }
        Ok(())
    }

    fn refuse(&self, req: &Request, refusal: Refusal) -> OnRequest {
        let mut challenge = format!("Bearer realm=\"{}\"", self.realm);
        let (status, code, message) = match &refusal {
            Refusal::Missing => (401, "unauthorized", "missing bearer token"),
            Refusal::Ambiguous => (400, "bad_request", "more than one bearer token"),
            Refusal::Invalid(m) => (401, "unauthorized", m.as_str()),
            Refusal::Forbidden(m) => (403, "forbidden", m.as_str()),
        };
        let error = match refusal {
            Refusal::Missing => None,
            Refusal::Ambiguous => Some("invalid_request"),
            Refusal::Invalid(_) => Some("invalid_token"),
            Refusal::Forbidden(_) => Some("insufficient_scope"),
        };
        if let Some(error) = error {
            challenge.push_str(&format!(
                ", error=\"{error}\", error_description=\"{}\"",
                quotable(message)
            ));
        }
        if status == 403 && !self.scopes.is_empty() {
            challenge.push_str(&format!(", scope=\"{}\"", self.scopes.join(" ")));
        }
        let body = serde_json::json!({
            "status": status,
            "code": code,
            "message": message,
            "request_id": req.request_id(),
        });
        OnRequest::respond(
            Response::new(status)
                .with_header("www-authenticate", challenge)
                .with_header("cache-control", "no-store")
                .json(body.to_string()),
        )
    }

    fn edits(&self, req: &Request, claims: &Map<String, Value>, source: Source) -> RequestEdits {
        let mut edits = RequestEdits::default();
        for (claim, header) in &self.claims_to_headers {
            // Whatever the client sent under this name goes, claim or not;
            // so do its spellings with `_` for `-`, which CGI-style servers
            // (WSGI, Rack, PHP) read as the same header.
            for name in spellings(header) {
                edits = edits.remove_header(name);
            }
            let Some(value) = claims.get(claim) else {
                continue;
            };
            match header_value(value) {
                Some(v) => edits = edits.set_header(header, v),
                None => log::warn(&format!(
                    "claim `{claim}` cannot be a header value (control characters or an empty value); {header} not set"
                )),
            }
        }
        if self.hide_credentials {
            edits = match source {
                Source::Header => edits.remove_header(&self.header),
                Source::Cookie => {
                    let name = self.cookie.as_deref().unwrap_or_default();
                    let rest: Vec<&str> = req
                        .header_all("cookie")
                        .flat_map(|h| h.split(';'))
                        .map(str::trim)
                        .filter(|pair| {
                            !pair.is_empty()
                                && pair.split_once('=').is_none_or(|(n, _)| n.trim() != name)
                        })
                        .collect();
                    if rest.is_empty() {
                        edits.remove_header("cookie")
                    } else {
                        edits.set_header("cookie", rest.join("; "))
                    }
                }
            };
        }
        edits
    }
}

/// A claim as a header value: strings as they are, numbers and booleans as
/// JSON, lists joined with `,`, objects as JSON. The UTF-8 bytes travel as
/// they are (each byte one character up to U+00FF, per the WIT contract).
/// `None` for null, an empty value, or control characters.
fn header_value(value: &Value) -> Option<String> {
    fn plain(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    let text = match value {
        Value::Null => return None,
        Value::Array(list) => list.iter().map(plain).collect::<Vec<_>>().join(","),
        v => plain(v),
    };
    if text.is_empty() || text.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return None;
    }
    Some(text.bytes().map(char::from).collect())
}

impl Filter for Jwt {
    fn new(config_text: &str) -> Result<Self, String> {
        let c: Config = parse_config(config_text)?;
        let mut keys = Vec::new();
        for (i, k) in c.keys.into_iter().enumerate() {
            keys.push(configured_key(i, k)?);
        }
        if let Some(name) = &c.jwks_var {
            keys.extend(jwks_keys(name, &var(name, "`jwks_var`")?)?);
        }
        if keys.is_empty() {
            return Err("give at least one key: `keys` or `jwks_var`".into());
        }
        let header = header_name("header", &c.header)?;
        if let Some(cookie) = &c.cookie
            && (cookie.is_empty() || !cookie.bytes().all(is_token_char))
        {
            return Err(format!("`cookie`: {cookie:?} is not a valid cookie name"));
        }
        if c.realm.is_empty() || quotable(&c.realm) != c.realm {
            return Err(format!(
                "`realm`: {:?} must be non-empty printable ASCII without '\"' or '\\'",
                c.realm
            ));
        }
        for scope in &c.scopes {
            if scope.is_empty() || scope.contains(' ') || quotable(scope) != *scope {
                return Err(format!(
                    "`scopes`: {scope:?} is not a scope (printable ASCII, no spaces, '\"' or '\\')"
                ));
            }
        }
        let mut claims = BTreeMap::new();
        for (name, accepted) in c.claims {
            let accepted = match accepted {
                Value::Array(list) => list,
                v => vec![v],
            };
            if accepted.is_empty()
                || accepted
                    .iter()
                    .any(|v| !(v.is_string() || v.is_number() || v.is_boolean()))
            {
                return Err(format!(
                    "`claims.{name}`: give a string, number or boolean, or a non-empty list of them"
                ));
            }
            claims.insert(name, accepted);
        }
        let mut claims_to_headers = BTreeMap::new();
        for (claim, h) in c.claims_to_headers {
            let h = header_name("claims_to_headers", &h)?;
            if wasmgate_sdk::is_managed_header(&h) {
                return Err(format!(
                    "`claims_to_headers`: the {h} header is managed by the gateway"
                ));
            }
            claims_to_headers.insert(claim, h);
        }
        Ok(Jwt {
            keys,
            header,
            cookie: c.cookie,
            realm: c.realm,
            issuers: c.issuer.map(|v| strings("issuer", v)).transpose()?,
            audiences: c.audiences.map(|v| strings("audiences", v)).transpose()?,
            clock_skew: f64::from(c.clock_skew),
            require_exp: c.require_exp,
            max_lifetime: c.max_lifetime.map(|s| s as f64),
            scopes: c.scopes,
            claims,
            claims_to_headers,
            hide_credentials: c.hide_credentials,
        })
    }

    fn info(&self) -> FilterInfo {
        let mut names = vec![self.header.clone()];
        if self.cookie.is_some() {
            names.push("cookie".into());
        }
        FilterInfo::new().request_headers(names)
    }

    fn on_request(&self, req: &Request) -> OnRequest {
        let (token, source) = match self.token(req) {
            Ok(found) => found,
            Err(refusal) => return self.refuse(req, refusal),
        };
        match self.verify(token, req.received_at_ms()) {
            Ok(claims) => OnRequest::proceed_with(self.edits(req, &claims, source)),
            Err(refusal) => self.refuse(req, refusal),
        }
    }
}

export_filter!(Jwt);

/// `name` and every spelling of it with some of its `-` as `_` (at most 64:
/// names with more than six dashes only get the all-`_` one as well).
fn spellings(name: &str) -> Vec<String> {
    let dashes: Vec<usize> = name.match_indices('-').map(|(i, _)| i).collect();
    if dashes.len() > 6 {
        return vec![name.to_owned(), name.replace('-', "_")];
    }
    (0u32..1 << dashes.len())
        .map(|mask| {
            let mut b = name.as_bytes().to_vec();
            for (bit, &i) in dashes.iter().enumerate() {
                if mask & (1 << bit) != 0 {
                    b[i] = b'_';
                }
            }
            String::from_utf8(b).unwrap_or_default()
        })
        .collect()
}
