//! Path templates of `google.api.http` rules:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! A parsed template is a flat list of segments; each variable records the
//! range of segments it captures. Matching works on the raw (still
//! percent-encoded) path: literals compare raw, captured values are decoded
//! (multi-segment captures keep `%2F` encoded, as the spec asks).

use std::cmp::Ordering;
use std::fmt;

use crate::error::ConfigError;
use crate::percent::{self, Decode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    Wildcard,
    /// `**`: zero or more segments; only as the last segment.
    MultiWildcard,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The field path, e.g. `["shelf", "id"]` for `{shelf.id}`.
    pub field_path: Vec<String>,
    /// First captured segment (index into [`PathTemplate::segments`]).
    pub start: usize,
    /// One past the last captured segment.
    pub end: usize,
}

impl Variable {
    pub fn dotted(&self) -> String {
        self.field_path.join(".")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    pub segments: Vec<Segment>,
    pub variables: Vec<Variable>,
    pub verb: Option<String>,
    source: String,
}

/// How closely a template matched: compared segment by segment, literal
/// beats `*` beats `**`; on a tie, a template with a verb wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Specificity {
    ranks: Vec<u8>,
    has_verb: bool,
}

impl Ord for Specificity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.ranks
            .cmp(&other.ranks)
            .then(self.has_verb.cmp(&other.has_verb))
    }
}

impl PartialOrd for Specificity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PathTemplate {
    pub fn parse(source: &str) -> Result<Self, ConfigError> {
        let err = |message: &str| ConfigError::Template {
            template: source.to_owned(),
            message: message.to_owned(),
        };
        let rest = source
            .strip_prefix('/')
            .ok_or_else(|| err("must start with '/'"))?;

        // The verb is the text after the last top-level ':' that has no
        // top-level '/' after it ("/v1/{name=a/*}:publish", not "/v1/a:b/c").
        let mut depth = 0usize;
        let mut verb_at = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.checked_sub(1).ok_or_else(|| err("unbalanced '}'"))?,
                ':' if depth == 0 => verb_at = Some(i),
                '/' if depth == 0 => verb_at = None,
                _ => {}
            }
        }
        if depth != 0 {
            return Err(err("unbalanced '{'"));
        }
        let (body, verb) = match verb_at {
            Some(i) => {
                let verb = &rest[i + 1..];
                if verb.is_empty() || verb.contains(['*', '{', '}']) {
                    return Err(err("the verb must be a literal"));
                }
                (&rest[..i], Some(verb.to_owned()))
            }
            None => (rest, None),
        };

        let mut segments = Vec::new();
        let mut variables: Vec<Variable> = Vec::new();
        for part in split_top_level(body) {
            if let Some(inner) = part.strip_prefix('{') {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| err("a variable must be a whole segment"))?;
                let (path, sub) = match inner.split_once('=') {
                    Some((path, sub)) => (path, Some(sub)),
                    None => (inner, None),
                };
                let field_path: Vec<String> = path.split('.').map(str::to_owned).collect();
                if !field_path.iter().all(|ident| is_ident(ident)) {
                    return Err(err(&format!("invalid field path {path:?}")));
                }
                if variables.iter().any(|v| v.field_path == field_path) {
                    return Err(err(&format!("field {path:?} is bound twice")));
                }
                let start = segments.len();
                match sub {
                    None => segments.push(Segment::Wildcard),
                    Some(sub) => {
                        for s in sub.split('/') {
                            if s.contains(['{', '}', '=']) {
                                return Err(err("variables cannot be nested"));
                            }
                            segments.push(parse_plain_segment(s).map_err(&err)?);
                        }
                    }
                }
                variables.push(Variable {
                    field_path,
                    start,
                    end: segments.len(),
                });
            } else if part.contains(['{', '}']) {
                return Err(err("a variable must be a whole segment"));
            } else {
                segments.push(parse_plain_segment(part).map_err(&err)?);
            }
        }
        if let Some(i) = segments.iter().position(|s| *s == Segment::MultiWildcard)
            && i + 1 != segments.len()
        {
            return Err(err("'**' must be the last segment"));
        }
        Ok(PathTemplate {
            segments,
            variables,
            verb,
            source: source.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// A key under which two templates that match exactly the same paths are
    /// equal (variable names do not matter).
    pub fn shape(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Wildcard => out.push('*'),
                Segment::MultiWildcard => out.push_str("**"),
            }
        }
        if let Some(v) = &self.verb {
            out.push(':');
            out.push_str(v);
        }
        out
    }

    /// Matches a raw request path (no query string). On success returns the
    /// decoded value of each variable, in [`Self::variables`] order.
    pub fn matches(&self, path: &str) -> Option<(Vec<String>, Specificity)> {
        let mut rest = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
            let (head, last) = rest.split_at(last_slash);
            let stem = last.strip_suffix(verb.as_str())?.strip_suffix(':')?;
            rest = &rest[..head.len() + stem.len()];
        }
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let multi = self.segments.last() == Some(&Segment::MultiWildcard);
        let fixed = self.segments.len() - usize::from(multi);
        if parts.len() < fixed || (!multi && parts.len() != fixed) {
            return None;
        }
        let mut ranks = Vec::with_capacity(self.segments.len());
        for (segment, part) in self.segments[..fixed].iter().zip(&parts) {
            match segment {
                Segment::Literal(l) if l == part => ranks.push(2),
                Segment::Wildcard if !part.is_empty() => ranks.push(1),
                _ => return None,
            }
        }
        if multi {
            ranks.push(0);
        }
        let values = self
            .variables
            .iter()
            .map(|v| {
                let end = if v.end == self.segments.len() && multi {
                    parts.len()
                } else {
                    v.end
                };
                let single = v.end - v.start == 1 && self.segments[v.start] == Segment::Wildcard;
                let raw = parts[v.start..end].join("/");
                let mode = if single {
                    Decode::All
                } else {
                    Decode::KeepSlash
                };
                percent::decode(&raw, mode, false)
            })
            .collect::<Option<Vec<_>>>()?;
        Some((
            values,
            Specificity {
                ranks,
                has_verb: self.verb.is_some(),
            },
        ))
    }
}

/// Splits on '/' outside braces.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_plain_segment(s: &str) -> Result<Segment, &'static str> {
    match s {
        "" => Err("empty segment"),
        "*" => Ok(Segment::Wildcard),
        "**" => Ok(Segment::MultiWildcard),
        s if s.contains('*') => Err("'*' must be a whole segment"),
        s => Ok(Segment::Literal(s.to_owned())),
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).unwrap()
    }

    #[test]
    fn parses_all_forms() {
        let tpl = t("/v1/{name=shelves/*/books/*}:publish");
        assert_eq!(
            tpl.segments,
            vec![
                Segment::Literal("v1".into()),
                Segment::Literal("shelves".into()),
                Segment::Wildcard,
                Segment::Literal("books".into()),
                Segment::Wildcard,
            ]
        );
        assert_eq!(tpl.variables[0].start, 1);
        assert_eq!(tpl.variables[0].end, 5);
        assert_eq!(tpl.verb.as_deref(), Some("publish"));

        let tpl = t("/v1/shelves/{shelf.id}/books/{book=*}");
        assert_eq!(tpl.variables[0].field_path, vec!["shelf", "id"]);
        assert_eq!(tpl.variables[1].dotted(), "book");
        assert_eq!(tpl.shape(), "/v1/shelves/*/books/*");

        let tpl = t("/v1/files/{path=**}");
        assert_eq!(tpl.segments.last(), Some(&Segment::MultiWildcard));
        // A ':' followed by a '/' is part of a literal, not a verb.
        assert_eq!(t("/v1/a:b/c").verb, None);
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "v1/books",
            "/v1//books",
            "/v1/{book",
            "/v1/book}",
            "/v1/{a}/{a}",
            "/v1/{a={b}}",
            "/v1/**/x",
            "/v1/{p=**}/x",
            "/v1/x:",
            "/v1/pre{a}",
            "/v1/{1a}",
            "/v1/a*",
        ] {
            assert!(
                PathTemplate::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
        let e = PathTemplate::parse("/v1/**/x").unwrap_err().to_string();
        assert_eq!(
            e,
            r#"path template "/v1/**/x": '**' must be the last segment"#
        );
    }

    #[test]
    fn matches_and_decodes() {
        let tpl = t("/v1/shelves/{shelf.id}/books/{book}");
        let (v, _) = tpl.matches("/v1/shelves/12/books/a%2Fb%20c").unwrap();
        assert_eq!(v, vec!["12", "a/b c"]);
        assert!(tpl.matches("/v1/shelves/12/books").is_none());
        assert!(tpl.matches("/v1/shelves//books/1").is_none());
        assert!(tpl.matches("/v1/shelves/1/books/2/x").is_none());

        let tpl = t("/v1/{name=shelves/*/books/*}:publish");
        let (v, _) = tpl.matches("/v1/shelves/s%2F1/books/b1:publish").unwrap();
        assert_eq!(v, vec!["shelves/s%2F1/books/b1"]);
        assert!(tpl.matches("/v1/shelves/s/books/b").is_none());
        assert!(tpl.matches("/v1/shelves/s/books/b:unpublish").is_none());

        let tpl = t("/v1/files/{path=**}");
        assert_eq!(
            tpl.matches("/v1/files/a/b/c.txt").unwrap().0,
            vec!["a/b/c.txt"]
        );
        assert_eq!(tpl.matches("/v1/files").unwrap().0, vec![""]);
        let tpl = t("/v1/files/{path=**}:stat");
        assert_eq!(tpl.matches("/v1/files/a/b:stat").unwrap().0, vec!["a/b"]);
    }

    #[test]
    fn specificity_orders_literal_wildcard_multi_then_verb() {
        let path = "/v1/books/featured";
        let lit = t("/v1/books/featured").matches(path).unwrap().1;
        let one = t("/v1/books/{id}").matches(path).unwrap().1;
        let multi = t("/v1/{rest=**}").matches(path).unwrap().1;
        assert!(lit > one && one > multi);

        let path = "/v1/books/1:publish";
        let verb = t("/v1/books/{id}:publish").matches(path).unwrap().1;
        let plain = t("/v1/books/{id}").matches(path).unwrap().1;
        assert!(verb > plain);
    }
}
