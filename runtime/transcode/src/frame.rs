//! gRPC length-prefixed message framing:
//! 1 byte flags (0x01 compressed, 0x80 gRPC-Web trailers), 4 bytes
//! big-endian length, then the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::TranscodeError;

pub const HEADER_LEN: usize = 5;
pub const FLAG_COMPRESSED: u8 = 0x01;
pub const FLAG_TRAILERS: u8 = 0x80;
/// gRPC's default maximum receive size.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub flags: u8,
    pub payload: Bytes,
}

impl Frame {
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
    pub fn is_trailers(&self) -> bool {
        self.flags & FLAG_TRAILERS != 0
    }
}

/// Frames `payload` with the given flags.
pub fn encode_frame(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_u8(flags);
    out.put_u32(u32::try_from(payload.len()).expect("frames are < 4 GiB"));
    out.put_slice(payload);
    out.freeze()
}

/// Encodes a message as one uncompressed gRPC frame.
pub fn encode_message(msg: &impl prost::Message) -> Bytes {
    let len = msg.encoded_len();
    let mut out = BytesMut::with_capacity(HEADER_LEN + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).expect("messages are < 4 GiB"));
    msg.encode(&mut out).expect("BytesMut grows");
    out.freeze()
}

/// Incremental frame decoder: feed body chunks as they come, take whole
/// frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_message_size: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl FrameDecoder {
    pub fn new(max_message_size: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max_message_size,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, or `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, TranscodeError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max_message_size {
            return Err(TranscodeError::Frame(format!(
                "message of {len} bytes is over the limit of {}",
                self.max_message_size
            )));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { flags, payload }))
    }

    /// Call at end of stream: a partial frame left over is an error.
    pub fn finish(&self) -> Result<(), TranscodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(TranscodeError::Frame(format!(
                "stream ended inside a frame ({} bytes left)",
                self.buf.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_across_chunk_boundaries() {
        let a = encode_frame(0, b"hello");
        let b = encode_frame(FLAG_TRAILERS, b"grpc-status: 0\r\n");
        let e = encode_frame(0, b"");
        let all: Vec<u8> = [a.as_ref(), b.as_ref(), e.as_ref()].concat();
        assert_eq!(&a[..5], &[0, 0, 0, 0, 5]);
        for split in 0..all.len() {
            let mut d = FrameDecoder::default();
            d.push(&all[..split]);
            let mut frames = Vec::new();
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
            d.push(&all[split..]);
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
            d.finish().unwrap();
            assert_eq!(frames.len(), 3, "split at {split}");
            assert_eq!(frames[0].payload.as_ref(), b"hello");
            assert!(frames[1].is_trailers() && !frames[0].is_trailers());
            assert!(frames[2].payload.is_empty());
        }
    }

    #[test]
    fn rejects_oversized_and_truncated() {
        let mut d = FrameDecoder::new(3);
        d.push(&encode_frame(0, b"toolong"));
        assert!(
            d.next_frame()
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
        let mut d = FrameDecoder::default();
        d.push(&encode_frame(0, b"abc")[..6]);
        assert_eq!(d.next_frame().unwrap(), None);
        assert!(d.finish().is_err());
    }
}
