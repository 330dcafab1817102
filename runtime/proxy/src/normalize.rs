//! One canonical path: the form used for routing, shown to filters, and
//! forwarded upstream, so that no two parts of the gateway disagree about
//! which resource a request names.
//!
//! Applied to the path (never the query), in this order:
//! 1. percent-escapes are checked (`%` + two hex digits) and their hex is
//!    upper-cased; escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded (RFC 3986 §6.2.2);
//! 2. escaped slashes and backslashes (`%2F`, `%5C`), raw backslashes and
//!    escaped NUL (`%00`) are rejected, unless allowed;
//! 3. runs of `/` are merged into one;
//! 4. `.` and `..` segments are resolved (RFC 3986 §5.2.4; `..` at the root
//!    stays at the root); `.;` and `..;` segments, which some servers treat as
//!    dot segments, are rejected.

use std::borrow::Cow;

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding in the path")]
    BadEscape,
    /// `%2F` or `%5C`, which would let a path segment hide a separator.
    #[error("encoded slash or backslash in the path")]
    EncodedSlash,
    /// A raw backslash.
    #[error("backslash in the path")]
    Backslash,
    /// `%00`.
    #[error("encoded NUL in the path")]
    Nul,
    /// A `.;` or `..;` segment.
    #[error("dot segment with parameters in the path")]
    DotParameter,
    /// Not starting with `/`.
    #[error("the path must start with '/'")]
    NotAbsolute,
}

/// What normalisation may let through.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathPolicy {
    /// Keep `%2F` / `%5C` (as escapes) instead of rejecting them.
    pub allow_encoded_slashes: bool,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalises `path` (without the query). Borrows when it is already
/// canonical, which is the common case.
pub fn normalize_path(path: &str, policy: PathPolicy) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast check: nothing to do for plain paths.
    let needs_work = bytes.iter().any(|&b| b == b'%' || b == b'\\' || b == b';')
        || path.contains("//")
        || path.contains("/./")
        || path.contains("/../")
        || path.ends_with("/.")
        || path.ends_with("/..");
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }

    // 1-2: escapes.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex_val),
                    bytes.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = h * 16 + l;
                if v == 0 {
                    return Err(PathError::Nul);
                }
                if v == b'/' || v == b'\\' {
                    if !policy.allow_encoded_slashes {
                        return Err(PathError::EncodedSlash);
                    }
                    decoded.push_str(if v == b'/' { "%2F" } else { "%5C" });
                } else if is_unreserved(v) {
                    decoded.push(char::from(v));
                } else {
                    decoded.push('%');
                    decoded.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                    decoded.push(char::from(bytes[i + 2].to_ascii_uppercase()));
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ => {
                // `path` is a &str and we only split at ASCII bytes, so copying
                // byte runs keeps it valid UTF-8.
                let start = i;
                while i < bytes.len() && bytes[i] != b'%' && bytes[i] != b'\\' {
                    i += 1;
                }
                decoded.push_str(&path[start..i]);
            }
        }
    }

    // 3-4: segments.
    let trailing_slash = decoded.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    let mut last_was_dot = false;
    for seg in decoded.split('/') {
        last_was_dot = false;
        match seg {
            "" => {}
            "." => last_was_dot = true,
            ".." => {
                out.pop();
                last_was_dot = true;
            }
            s if s.starts_with(".;") || s.starts_with("..;") => {
                return Err(PathError::DotParameter);
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if result.is_empty() || ((trailing_slash || last_was_dot) && !result.ends_with('/')) {
        result.push('/');
    }
    Ok(if result == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(result)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p, PathPolicy::default()).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", "/api/search", "/api/search/", "/a-b_c~d.e"] {
            assert!(
                matches!(
                    normalize_path(p, PathPolicy::default()),
                    Ok(Cow::Borrowed(_))
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn normalisation_table() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/api//search", Ok("/api/search")),
            ("//api///search//", Ok("/api/search/")),
            ("/api/./search", Ok("/api/search")),
            ("/api/x/../search", Ok("/api/search")),
            ("/api/search/..", Ok("/api/")),
            ("/api/search/.", Ok("/api/search/")),
            ("/../../etc/passwd", Ok("/etc/passwd")),
            ("/api/%2e%2e/admin", Ok("/admin")),
            ("/api/%2E%2e/admin", Ok("/admin")),
            ("/%61pi/search", Ok("/api/search")),
            ("/api/%7euser", Ok("/api/~user")),
            ("/api/a%3fb", Ok("/api/a%3Fb")),
            ("/api/caf%c3%a9", Ok("/api/caf%C3%A9")),
            ("/api/%2fadmin", Err(PathError::EncodedSlash)),
            ("/api/%2Fadmin", Err(PathError::EncodedSlash)),
            ("/api/%5cadmin", Err(PathError::EncodedSlash)),
            ("/api\\admin", Err(PathError::Backslash)),
            ("/api/%00", Err(PathError::Nul)),
            ("/api/%zz", Err(PathError::BadEscape)),
            ("/api/%4", Err(PathError::BadEscape)),
            ("/api/..;/admin", Err(PathError::DotParameter)),
            ("/api/.;/admin", Err(PathError::DotParameter)),
            ("/api/a;b", Ok("/api/a;b")),
            ("api", Err(PathError::NotAbsolute)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                norm(input).as_deref().map_err(Clone::clone),
                expected.clone(),
                "{input}"
            );
        }
    }

    #[test]
    fn encoded_slashes_can_be_allowed() {
        let p = PathPolicy {
            allow_encoded_slashes: true,
        };
        assert_eq!(normalize_path("/a/%2f/b", p).unwrap(), "/a/%2F/b");
    }
}
