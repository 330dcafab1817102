//! gRPC-Web framing (<https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md>).
//!
//! Requests: `application/grpc-web(+proto)` bodies are already gRPC frames
//! and pass through; `application/grpc-web-text(+proto)` bodies are base64
//! of those frames, possibly in separately padded chunks.
//! Responses: messages are gRPC frames; the trailers become one last frame
//! with flag 0x80 holding `name: value\r\n` lines (base64 again in text mode).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::TranscodeError;
use crate::frame::{self, FLAG_TRAILERS};

/// The content type to send upstream for a gRPC-Web request.
pub const UPSTREAM_CONTENT_TYPE: &str = "application/grpc";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebMode {
    /// `application/grpc-web`, `application/grpc-web+proto`.
    Binary,
    /// `application/grpc-web-text`, `application/grpc-web-text+proto`.
    Text,
}

impl WebMode {
    /// Recognizes a gRPC-Web request content type (parameters ignored).
    pub fn from_content_type(content_type: &str) -> Option<WebMode> {
        let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/grpc-web" | "application/grpc-web+proto" => Some(WebMode::Binary),
            "application/grpc-web-text" | "application/grpc-web-text+proto" => Some(WebMode::Text),
            _ => None,
        }
    }

    /// The response content type for this mode.
    pub fn response_content_type(self) -> &'static str {
        match self {
            WebMode::Binary => "application/grpc-web+proto",
            WebMode::Text => "application/grpc-web-text+proto",
        }
    }
}

/// A gRPC-Web request body, chunk by chunk, as gRPC frames for upstream:
/// binary bodies pass through untouched, text bodies are base64-decoded.
#[derive(Debug)]
pub enum RequestBody {
    Binary,
    Text(TextDecoder),
}

impl RequestBody {
    pub fn new(mode: WebMode) -> Self {
        match mode {
            WebMode::Binary => RequestBody::Binary,
            WebMode::Text => RequestBody::Text(TextDecoder::new()),
        }
    }

    pub fn push(&mut self, chunk: Bytes) -> Result<Bytes, TranscodeError> {
        match self {
            RequestBody::Binary => Ok(chunk),
            RequestBody::Text(d) => d.push(&chunk).map(Bytes::from),
        }
    }

    pub fn finish(&self) -> Result<(), TranscodeError> {
        match self {
            RequestBody::Binary => Ok(()),
            RequestBody::Text(d) => d.finish(),
        }
    }
}

/// The gRPC-Web response body: upstream DATA passes through (base64 in
/// text mode), trailers become the final 0x80 frame.
#[derive(Debug, Clone, Copy)]
pub struct ResponseEncoder {
    mode: WebMode,
}

impl ResponseEncoder {
    pub fn new(mode: WebMode) -> Self {
        ResponseEncoder { mode }
    }

    pub fn data(&self, chunk: &[u8]) -> Bytes {
        match self.mode {
            WebMode::Binary => Bytes::copy_from_slice(chunk),
            WebMode::Text => Bytes::from(encode_text(chunk)),
        }
    }

    /// Also used for a trailers-only upstream answer (its headers).
    pub fn trailers(&self, trailers: &HeaderMap) -> Bytes {
        let frame = encode_trailers(trailers);
        match self.mode {
            WebMode::Binary => frame,
            WebMode::Text => Bytes::from(encode_text(&frame)),
        }
    }
}

/// Incremental base64 decoder for `grpc-web-text` bodies: chunks may split
/// a 4-character quantum, and each chunk the client sent may carry its own
/// padding, so decoding goes quantum by quantum. Whitespace is skipped.
#[derive(Debug, Default)]
pub struct TextDecoder {
    pending: Vec<u8>,
}

impl TextDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes every whole quantum of `chunk` (plus what was pending).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TranscodeError> {
        self.pending
            .extend(chunk.iter().copied().filter(|b| !b.is_ascii_whitespace()));
        let whole = self.pending.len() / 4 * 4;
        let mut out = Vec::with_capacity(whole / 4 * 3);
        // Runs of unpadded quanta decode in one call; a padded quantum ends a run.
        let mut start = 0;
        for q in (0..whole).step_by(4) {
            if self.pending[q + 3] == b'=' {
                decode_into(&self.pending[start..q + 4], &mut out)?;
                start = q + 4;
            }
        }
        decode_into(&self.pending[start..whole], &mut out)?;
        self.pending.drain(..whole);
        Ok(out)
    }

    /// Call at end of body: leftover characters are an error.
    pub fn finish(&self) -> Result<(), TranscodeError> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(TranscodeError::GrpcWebText(format!(
                "{} trailing characters do not make a base64 quantum",
                self.pending.len()
            )))
        }
    }
}

fn decode_into(b64: &[u8], out: &mut Vec<u8>) -> Result<(), TranscodeError> {
    if b64.is_empty() {
        return Ok(());
    }
    STANDARD
        .decode_vec(b64, out)
        .map_err(|e| TranscodeError::GrpcWebText(e.to_string()))
}

/// Base64 for a `grpc-web-text` response chunk (each chunk padded on its own).
pub fn encode_text(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The trailer frame: flag 0x80, then `name: value\r\n` per trailer, names
/// lower-case (as `http` stores them).
pub fn encode_trailers(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    frame::encode_frame(FLAG_TRAILERS, &block)
}

/// Parses the payload of a trailer frame.
pub fn decode_trailers(payload: &[u8]) -> Result<HeaderMap, TranscodeError> {
    let bad = |m: &str| TranscodeError::Frame(format!("invalid trailer block: {m}"));
    let mut map = HeaderMap::new();
    for line in payload.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| bad("line without ':'"))?;
        let name =
            HeaderName::from_bytes(line[..colon].trim_ascii()).map_err(|_| bad("invalid name"))?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
            .map_err(|_| bad("invalid value"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameDecoder, encode_frame};

    #[test]
    fn content_types() {
        assert_eq!(
            WebMode::from_content_type("application/grpc-web"),
            Some(WebMode::Binary)
        );
        assert_eq!(
            WebMode::from_content_type("application/grpc-web+proto"),
            Some(WebMode::Binary)
        );
        assert_eq!(
            WebMode::from_content_type("application/grpc-web-text; charset=utf-8"),
            Some(WebMode::Text)
        );
        assert_eq!(
            WebMode::from_content_type("Application/GRPC-Web-Text+proto"),
            Some(WebMode::Text)
        );
        assert_eq!(WebMode::from_content_type("application/grpc"), None);
        assert_eq!(WebMode::from_content_type("application/json"), None);
    }

    #[test]
    fn binary_body_passes_through_as_frames() {
        let body = [encode_frame(0, b"m1"), encode_frame(0, b"m2")].concat();
        let mut d = FrameDecoder::default();
        d.push(&body);
        assert_eq!(d.next_frame().unwrap().unwrap().payload.as_ref(), b"m1");
        assert_eq!(d.next_frame().unwrap().unwrap().payload.as_ref(), b"m2");
    }

    #[test]
    fn text_body_in_odd_and_separately_padded_chunks() {
        let f1 = encode_frame(0, b"hello");
        let f2 = encode_frame(0, b"w");
        let want = [f1.as_ref(), f2.as_ref()].concat();
        // Each frame base64'd on its own (both padded), sent in 3-byte pieces
        // with a line break inside.
        let text = format!("{}\r\n{}", encode_text(&f1), encode_text(&f2));
        assert!(encode_text(&f1).ends_with('='));
        let mut dec = TextDecoder::new();
        let mut got = Vec::new();
        for piece in text.as_bytes().chunks(3) {
            got.extend(dec.push(piece).unwrap());
        }
        dec.finish().unwrap();
        assert_eq!(got, want);

        let mut dec = TextDecoder::new();
        dec.push(b"AAA").unwrap();
        assert!(dec.finish().is_err());
        assert!(TextDecoder::new().push(b"A!AA").is_err());
    }

    #[test]
    fn trailers_frame_round_trip() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "5".parse().unwrap());
        t.insert("grpc-message", "not%20found".parse().unwrap());
        let frame = encode_trailers(&t);
        assert_eq!(frame[0], 0x80);
        assert_eq!(
            &frame[5..],
            b"grpc-status: 5\r\ngrpc-message: not%20found\r\n".as_ref()
        );
        let back = decode_trailers(&frame[5..]).unwrap();
        assert_eq!(back, t);
        // And through the text encoding.
        let mut dec = TextDecoder::new();
        assert_eq!(
            dec.push(encode_text(&frame).as_bytes()).unwrap(),
            frame.as_ref()
        );
    }
}
