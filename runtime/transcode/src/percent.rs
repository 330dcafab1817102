//! Percent-decoding for path captures, query strings and `grpc-message`.
//! A '%' not followed by two hex digits is kept as is.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decode {
    /// Decode every escape.
    All,
    /// Keep `%2F` / `%2f` encoded (multi-segment path captures).
    KeepSlash,
}

pub(crate) fn decode_bytes(raw: &str, mode: Decode, plus_as_space: bool) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex(*c)),
                bytes.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            let v = h << 4 | l;
            if mode == Decode::KeepSlash && v == b'/' {
                out.extend_from_slice(&bytes[i..i + 3]);
            } else {
                out.push(v);
            }
            i += 3;
            continue;
        }
        out.push(if b == b'+' && plus_as_space { b' ' } else { b });
        i += 1;
    }
    out
}

/// Decodes into UTF-8; `None` if the decoded bytes are not UTF-8.
pub(crate) fn decode(raw: &str, mode: Decode, plus_as_space: bool) -> Option<String> {
    String::from_utf8(decode_bytes(raw, mode, plus_as_space)).ok()
}

/// Decodes, replacing invalid UTF-8 (for `grpc-message`).
pub(crate) fn decode_lossy(raw: &str) -> String {
    String::from_utf8_lossy(&decode_bytes(raw, Decode::All, false)).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert_eq!(decode("a%20b%2Fc", Decode::All, false).unwrap(), "a b/c");
        assert_eq!(
            decode("a%20b%2fc", Decode::KeepSlash, false).unwrap(),
            "a b%2fc"
        );
        assert_eq!(decode("a+b", Decode::All, false).unwrap(), "a+b");
        assert_eq!(decode("a+b", Decode::All, true).unwrap(), "a b");
        assert_eq!(decode("100%", Decode::All, false).unwrap(), "100%");
        assert_eq!(decode("%zz%4", Decode::All, false).unwrap(), "%zz%4");
        assert_eq!(decode("%C3%A9", Decode::All, false).unwrap(), "é");
        assert_eq!(decode("%FF", Decode::All, false), None);
        assert_eq!(decode_lossy("bad %FF"), "bad \u{FFFD}");
    }
}
