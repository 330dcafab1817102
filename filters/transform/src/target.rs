//! Path and query edits on the request target (`path-with-query`).

use std::collections::BTreeMap;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use regex_lite::Regex;
use serde::Deserialize;

/// `path = { strip_prefix, add_prefix }` or `path = { regex, replace }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathConfig {
    strip_prefix: Option<String>,
    add_prefix: Option<String>,
    regex: Option<String>,
    replace: Option<String>,
}

pub enum PathEdit {
    /// Both canonical, without a trailing `/`; empty when not given.
    Prefix {
        strip: String,
        add: String,
    },
    Regex {
        regex: Regex,
        replace: String,
    },
}

/// Bytes a path may hold literally besides ALPHA / DIGIT (RFC 3986 `pchar`
/// and `/`).
fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// A prefix from the config in the gateway's canonical form, so it compares
/// with the paths filters see: escapes of unreserved characters decoded,
/// other escapes upper-cased, characters a path cannot hold (spaces,
/// non-ASCII) percent-encoded, the trailing `/` dropped.
fn canonical_prefix(text: &str, what: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("`{what}`: {text:?} must start with '/'"));
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(format!("`{what}`: {text:?} has a malformed %-escape"));
            };
            let decoded = hi * 16 + lo;
            if is_unreserved(decoded) {
                out.push(decoded as char);
            } else {
                out.push_str(&format!("%{decoded:02X}"));
            }
            i += 3;
            continue;
        }
        if b == b'?' || b == b'#' {
            return Err(format!(
                "`{what}`: {text:?} contains {:?}; a prefix is part of the path only",
                b as char
            ));
        }
        if is_path_byte(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        i += 1;
    }
    let trimmed = out.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(format!(
            "`{what}`: {text:?} is the prefix of every path; it would change nothing"
        ));
    }
    Ok(trimmed.to_owned())
}

/// Checks a `replace` template: the groups it names exist in `regex`, and
/// its literal text is valid in a path.
fn check_replace(regex: &Regex, replace: &str) -> Result<(), String> {
    let what = "request.path.replace";
    let names: Vec<&str> = regex.capture_names().flatten().collect();
    let groups = regex.captures_len();
    let bytes = replace.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'$' {
            // The syntax of regex's `Captures::expand`: `$$`, `$name`, `${name}`.
            let (name, next) = if bytes.get(i + 1) == Some(&b'$') {
                i += 2;
                continue;
            } else if bytes.get(i + 1) == Some(&b'{') {
                let Some(close) = replace[i + 2..].find('}') else {
                    return Err(format!("`{what}`: {replace:?} has a `${{` without `}}`"));
                };
                (&replace[i + 2..i + 2 + close], i + 3 + close)
            } else {
                let len = replace[i + 1..]
                    .bytes()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
                    .count();
                (&replace[i + 1..i + 1 + len], i + 1 + len)
            };
            let known = match name.parse::<usize>() {
                Ok(n) => n < groups,
                Err(_) => names.contains(&name),
            };
            if name.is_empty() || !known {
                return Err(format!(
                    "`{what}`: {replace:?} refers to group {name:?}, which {:?} does not have (write `$$` for a literal `$`, `${{1}}x` to follow a group with text)",
                    regex.as_str()
                ));
            }
            i = next;
            continue;
        }
        if b == b'%' {
            if bytes.get(i + 1).copied().and_then(hex).is_none()
                || bytes.get(i + 2).copied().and_then(hex).is_none()
            {
                return Err(format!("`{what}`: {replace:?} has a malformed %-escape"));
            }
            i += 3;
            continue;
        }
        if !is_path_byte(b) {
            return Err(format!(
                "`{what}`: {replace:?} contains {:?}, which a path cannot hold (percent-encode it; use `query` to edit the query)",
                b as char
            ));
        }
        i += 1;
    }
    Ok(())
}

impl PathEdit {
    pub fn compile(config: PathConfig) -> Result<PathEdit, String> {
        match config {
            PathConfig {
                regex: None,
                replace: None,
                strip_prefix,
                add_prefix,
            } => {
                if strip_prefix.is_none() && add_prefix.is_none() {
                    return Err("`request.path`: give `strip_prefix` and/or `add_prefix`, or `regex` and `replace`".into());
                }
                let strip = strip_prefix
                    .map(|p| canonical_prefix(&p, "request.path.strip_prefix"))
                    .transpose()?
                    .unwrap_or_default();
                let add = add_prefix
                    .map(|p| canonical_prefix(&p, "request.path.add_prefix"))
                    .transpose()?
                    .unwrap_or_default();
                Ok(PathEdit::Prefix { strip, add })
            }
            PathConfig {
                regex: Some(pattern),
                replace: Some(replace),
                strip_prefix: None,
                add_prefix: None,
            } => {
                let regex = Regex::new(&pattern).map_err(|e| {
                    format!("`request.path.regex`: {pattern:?} is not a valid regular expression: {e}")
                })?;
                check_replace(&regex, &replace)?;
                Ok(PathEdit::Regex { regex, replace })
            }
            PathConfig {
                regex: Some(_),
                replace: None,
                ..
            } => Err("`request.path`: `regex` needs `replace`".into()),
            PathConfig {
                regex: None,
                replace: Some(_),
                ..
            } => Err("`request.path`: `replace` needs `regex`".into()),
            PathConfig { .. } => Err(
                "`request.path`: give either `strip_prefix`/`add_prefix` or `regex`/`replace`, not both"
                    .into(),
            ),
        }
    }

    /// The new path, or `None` when this path is left as it is.
    pub fn apply(&self, path: &str) -> Option<String> {
        let out = match self {
            PathEdit::Prefix { strip, add } => {
                let rest = if strip.is_empty() {
                    path
                } else {
                    // On whole segments: `/api` strips `/api` and `/api/x`,
                    // never `/apix`.
                    match path.strip_prefix(strip.as_str()) {
                        Some(r) if r.is_empty() || r.starts_with('/') => r,
                        _ => return None,
                    }
                };
                format!("{add}{rest}")
            }
            PathEdit::Regex { regex, replace } => {
                if !regex.is_match(path) {
                    return None;
                }
                regex.replace(path, replace.as_str()).into_owned()
            }
        };
        Some(if out.starts_with('/') {
            out
        } else {
            format!("/{out}")
        })
    }
}

/// `query = { remove, rename, set, append }`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    append: BTreeMap<String, String>,
}

/// Query edits by decoded parameter name, applied remove, rename, set, append.
pub struct QueryEdits {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    /// (decoded name, encoded `name=value`)
    set: Vec<(String, String)>,
    append: Vec<String>,
}

/// What stays literal in a query name or value written from the config:
/// unreserved characters only, so the result means the same to every parser
/// (a space becomes `%20`, never `+`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// A parameter's name as routes match it: percent-decoded, `+` as space.
fn decoded_name(raw: &str) -> String {
    form_urlencoded::parse(raw.as_bytes())
        .next()
        .map(|(n, _)| n.into_owned())
        .unwrap_or_default()
}

impl QueryEdits {
    pub fn compile(config: QueryConfig) -> Result<Option<QueryEdits>, String> {
        let QueryConfig {
            remove,
            rename,
            set,
            append,
        } = config;
        if remove.is_empty() && rename.is_empty() && set.is_empty() && append.is_empty() {
            return Ok(None);
        }
        for name in remove
            .iter()
            .chain(rename.keys())
            .chain(rename.values())
            .chain(set.keys())
            .chain(append.keys())
        {
            if name.is_empty() {
                return Err("`request.query`: a parameter name must not be empty".into());
            }
        }
        let mut targets = Vec::new();
        for (from, to) in &rename {
            if from == to || rename.contains_key(to) {
                return Err(format!(
                    "`request.query.rename`: {from:?} → {to:?} renames into a name that is itself renamed"
                ));
            }
            if targets.contains(&to) {
                return Err(format!(
                    "`request.query.rename`: two parameters are renamed to {to:?}"
                ));
            }
            targets.push(to);
        }
        Ok(Some(QueryEdits {
            remove,
            rename: rename.into_iter().collect(),
            set: set
                .into_iter()
                .map(|(n, v)| {
                    let raw = format!("{}={}", encode(&n), encode(&v));
                    (n, raw)
                })
                .collect(),
            append: append
                .into_iter()
                .map(|(n, v)| format!("{}={}", encode(&n), encode(&v)))
                .collect(),
        }))
    }

    /// The edited query (without `?`; empty when no parameter is left).
    /// Parameters the edits do not touch keep their exact text.
    pub fn apply(&self, query: &str) -> String {
        // (decoded name, raw text)
        let mut params: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|raw| (decoded_name(raw), raw.to_owned()))
            .collect();
        params.retain(|(name, _)| !self.remove.contains(name));
        for (from, to) in &self.rename {
            if !params.iter().any(|(n, _)| n == from) {
                continue;
            }
            // The renamed parameter replaces any the target name had.
            params.retain(|(n, _)| n != to);
            for (name, raw) in params.iter_mut().filter(|(n, _)| n == from) {
                *raw = match raw.split_once('=') {
                    Some((_, value)) => format!("{}={value}", encode(to)),
                    None => encode(to),
                };
                name.clone_from(to);
            }
        }
        for (name, raw) in &self.set {
            // In place of the first occurrence, or at the end.
            match params.iter().position(|(n, _)| n == name) {
                Some(i) => {
                    params[i].1.clone_from(raw);
                    let mut seen = 0;
                    params.retain(|(n, _)| {
                        if n != name {
                            return true;
                        }
                        seen += 1;
                        seen == 1
                    });
                }
                None => params.push((name.clone(), raw.clone())),
            }
        }
        let mut out: Vec<&str> = params.iter().map(|(_, raw)| raw.as_str()).collect();
        out.extend(self.append.iter().map(String::as_str));
        out.join("&")
    }
}
