//! JSON body edits addressed by RFC 6901 JSON Pointers.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

/// `json = { remove = [...], rename = { from = to }, set = { pointer = value } }`
/// as written in the config.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JsonConfig {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    set: BTreeMap<String, Value>,
}

/// A parsed pointer: its reference tokens, and the text for messages.
#[derive(Clone)]
struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    fn parse(text: &str, what: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Err(format!(
                "`{what}`: \"\" points at the whole document, which cannot be edited; name a member such as \"/field\""
            ));
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "`{what}`: {text:?} is not a JSON Pointer (RFC 6901): it must start with '/'"
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => {
                        return Err(format!(
                            "`{what}`: {text:?} is not a JSON Pointer (RFC 6901): '~' must be followed by 0 or 1"
                        ));
                    }
                }
            }
            tokens.push(token);
        }
        Ok(Pointer {
            text: text.to_owned(),
            tokens,
        })
    }

    /// Whether `self` is `other` or lies inside it.
    fn is_within(&self, other: &Pointer) -> bool {
        self.tokens.starts_with(&other.tokens)
    }
}

/// Compiled JSON edits, applied in the order remove, rename, set.
pub struct JsonEdits {
    remove: Vec<Pointer>,
    rename: Vec<(Pointer, Pointer)>,
    set: Vec<(Pointer, Value)>,
}

impl JsonEdits {
    /// Validates the config of one side (`side` is `request` or `response`).
    pub fn compile(config: JsonConfig, side: &str) -> Result<JsonEdits, String> {
        let remove = config
            .remove
            .iter()
            .map(|p| Pointer::parse(p, &format!("{side}.json.remove")))
            .collect::<Result<Vec<_>, _>>()?;
        let what = format!("{side}.json.rename");
        let mut rename = Vec::new();
        for (from, to) in &config.rename {
            let (from, to) = (Pointer::parse(from, &what)?, Pointer::parse(to, &what)?);
            if to.is_within(&from) {
                return Err(format!(
                    "`{what}`: {:?} cannot move into itself ({:?})",
                    from.text, to.text
                ));
            }
            rename.push((from, to));
        }
        for (i, (from, to)) in rename.iter().enumerate() {
            if rename.iter().any(|(f, _)| f.tokens == to.tokens) {
                return Err(format!(
                    "`{what}`: {:?} → {:?} renames into a pointer that is itself renamed",
                    from.text, to.text
                ));
            }
            if rename[..i].iter().any(|(_, t)| t.tokens == to.tokens) {
                return Err(format!(
                    "`{what}`: two members are renamed to {:?}",
                    to.text
                ));
            }
        }
        let set = config
            .set
            .into_iter()
            .map(|(p, v)| Ok((Pointer::parse(&p, &format!("{side}.json.set"))?, v)))
            .collect::<Result<Vec<_>, String>>()?;
        if remove.is_empty() && rename.is_empty() && set.is_empty() {
            return Err(format!(
                "`{side}.json`: give at least one of `remove`, `rename`, `set`"
            ));
        }
        Ok(JsonEdits {
            remove,
            rename,
            set,
        })
    }

    /// Applies every edit to `doc`. Returns whether anything changed, and the
    /// pointers of edits that did not fit the document (a scalar where a
    /// container was needed, an array index out of range), which are skipped.
    pub fn apply(&self, doc: &mut Value) -> (bool, Vec<&str>) {
        let mut changed = false;
        let mut skipped = Vec::new();
        for p in &self.remove {
            changed |= remove(doc, &p.tokens).is_some();
        }
        for (from, to) in &self.rename {
            match rename(doc, &from.tokens, &to.tokens) {
                Moved::Yes => changed = true,
                Moved::NoSource => {}
                Moved::NoPlace => skipped.push(to.text.as_str()),
            }
        }
        for (p, value) in &self.set {
            match set(doc, &p.tokens, value.clone()) {
                Ok(()) => changed = true,
                Err(_) => skipped.push(p.text.as_str()),
            }
        }
        (changed, skipped)
    }
}

/// An array index as RFC 6901 spells it: `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

fn lookup_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t)?,
            Value::Array(a) => a.get_mut(array_index(t)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Removes the value at `tokens`, if there is one. Object members keep the
/// order of the others.
fn remove(doc: &mut Value, tokens: &[String]) -> Option<Value> {
    let (last, parent) = tokens.split_last()?;
    match lookup_mut(doc, parent)? {
        Value::Object(m) => m.shift_remove(last),
        Value::Array(a) => {
            let i = array_index(last)?;
            (i < a.len()).then(|| a.remove(i))
        }
        _ => None,
    }
}

/// Sets the value at `tokens`, creating missing intermediate members as
/// objects (arrays before a `-`). `-` as an array index appends. When the path runs into a scalar
/// or past the end of an array, nothing changes and the value is handed back.
fn set(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), Value> {
    let Some((last, parents)) = tokens.split_last() else {
        return Err(value);
    };
    // Check read-only first, so a path that does not fit changes nothing:
    // intermediates are only created past the last existing value, where
    // nothing can fail any more.
    if !fits(doc, parents, last) {
        return Err(value);
    }
    let mut cur = doc;
    for (depth, t) in parents.iter().enumerate() {
        // A container made for a missing member is an array when the next
        // token is `-` (the end of an array), an object otherwise.
        let next = tokens[depth + 1].as_str();
        let new = || {
            if next == "-" {
                Value::Array(Vec::new())
            } else {
                Value::Object(Map::new())
            }
        };
        cur = match cur {
            Value::Object(m) => m.entry(t.clone()).or_insert_with(new),
            Value::Array(a) => {
                let i = if t == "-" {
                    a.push(new());
                    a.len() - 1
                } else {
                    match array_index(t).filter(|&i| i < a.len()) {
                        Some(i) => i,
                        None => return Err(value),
                    }
                };
                &mut a[i]
            }
            _ => return Err(value),
        };
    }
    match cur {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => match array_index(last) {
            Some(i) if i < a.len() => a[i] = value,
            _ => a.push(value),
        },
        _ => return Err(value),
    }
    Ok(())
}

/// Whether [`set`] can place a value at `parents` + `last`.
fn fits(doc: &Value, parents: &[String], last: &str) -> bool {
    let mut cur = doc;
    for t in parents {
        cur = match cur {
            Value::Object(m) => match m.get(t) {
                Some(v) => v,
                // Missing: everything from here on is created as objects.
                None => return true,
            },
            Value::Array(_) if t == "-" => return true,
            Value::Array(a) => match array_index(t).and_then(|i| a.get(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        Value::Object(_) => true,
        Value::Array(a) => last == "-" || array_index(last).is_some_and(|i| i <= a.len()),
        _ => false,
    }
}

enum Moved {
    Yes,
    NoSource,
    NoPlace,
}

/// Moves the value at `from` to `to` (replacing what is there). A member
/// renamed within the same object keeps its position. If `to` cannot take a
/// value, the document is left as it was.
fn rename(doc: &mut Value, from: &[String], to: &[String]) -> Moved {
    let (Some((from_last, from_parent)), Some((to_last, to_parent))) =
        (from.split_last(), to.split_last())
    else {
        return Moved::NoSource;
    };
    let Some(parent) = lookup_mut(doc, from_parent) else {
        return Moved::NoSource;
    };
    match parent {
        Value::Object(m) => {
            let Some(pos) = m.keys().position(|k| k == from_last) else {
                return Moved::NoSource;
            };
            if from_parent == to_parent {
                let value = m.shift_remove(from_last).expect("found above");
                let pos = match m.keys().position(|k| k == to_last) {
                    Some(existing) => {
                        m.shift_remove(to_last);
                        if existing < pos { pos - 1 } else { pos }
                    }
                    None => pos,
                };
                m.shift_insert(pos, to_last.clone(), value);
                return Moved::Yes;
            }
            let value = m.shift_remove(from_last).expect("found above");
            if set(doc, to, value)
                .map_err(|value| {
                    if let Some(Value::Object(m)) = lookup_mut(doc, from_parent) {
                        m.shift_insert(pos, from_last.clone(), value);
                    }
                })
                .is_ok()
            {
                Moved::Yes
            } else {
                Moved::NoPlace
            }
        }
        Value::Array(a) => {
            let Some(i) = array_index(from_last).filter(|&i| i < a.len()) else {
                return Moved::NoSource;
            };
            let value = a.remove(i);
            if set(doc, to, value)
                .map_err(|value| {
                    if let Some(Value::Array(a)) = lookup_mut(doc, from_parent) {
                        a.insert(i, value);
                    }
                })
                .is_ok()
            {
                Moved::Yes
            } else {
                Moved::NoPlace
            }
        }
        _ => Moved::NoSource,
    }
}

/// Whether a `Content-Type` names JSON: `application/json` or any
/// `type/subtype+json` (`application/problem+json`), parameters ignored.
pub fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json"
        || mime
            .split_once('/')
            .is_some_and(|(t, sub)| !t.is_empty() && sub.len() > 5 && sub.ends_with("+json"))
}

/// Whether a `Content-Encoding` leaves the body as it is (absent or `identity`).
pub fn is_identity(content_encoding: Option<&str>) -> bool {
    content_encoding
        .is_none_or(|e| e.trim().is_empty() || e.trim().eq_ignore_ascii_case("identity"))
}
