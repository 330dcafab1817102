//! gRPC response frames → proto3 JSON.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, MessageDescriptor, ReflectMessage, SerializeOptions,
};

use crate::error::TranscodeError;
use crate::frame::{DEFAULT_MAX_MESSAGE_SIZE, FrameDecoder};
use crate::router::Route;

/// How a server-streaming method's messages are written to the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamFormat {
    /// One JSON array, `[` before the first message and `]` after the last
    /// (Envoy's default).
    #[default]
    Array,
    /// One JSON message per line (`application/x-ndjson`).
    NewlineDelimited,
    /// Server-sent events: `data: <json>` and a blank line per message
    /// (`text/event-stream`).
    ServerSentEvents,
}

impl StreamFormat {
    /// The response `content-type`.
    pub fn content_type(self) -> &'static str {
        match self {
            StreamFormat::Array => "application/json",
            StreamFormat::NewlineDelimited => "application/x-ndjson",
            StreamFormat::ServerSentEvents => "text/event-stream",
        }
    }

    /// A failure after messages were sent, written into the stream where
    /// the format has room for it (`None`: the array has none; the
    /// response is cut off instead).
    pub fn error_record(self, error_json: &[u8]) -> Option<Vec<u8>> {
        match self {
            StreamFormat::Array => None,
            StreamFormat::NewlineDelimited => {
                let mut out = b"{\"error\":".to_vec();
                out.extend_from_slice(error_json);
                out.extend_from_slice(b"}\n");
                Some(out)
            }
            StreamFormat::ServerSentEvents => {
                let mut out = b"event: error\ndata: ".to_vec();
                out.extend_from_slice(error_json);
                out.extend_from_slice(b"\n\n");
                Some(out)
            }
        }
    }
}

/// Response-side options.
#[derive(Debug, Clone)]
pub struct ResponseOptions {
    /// Emit fields with default values (proto3 JSON omits them).
    pub emit_defaults: bool,
    /// Use `snake_case` proto names instead of lowerCamel JSON names.
    pub use_proto_field_names: bool,
    /// Enums as numbers instead of names.
    pub enums_as_ints: bool,
    /// How a server stream's messages are written.
    pub stream: StreamFormat,
    pub max_message_size: usize,
}

impl Default for ResponseOptions {
    fn default() -> Self {
        ResponseOptions {
            emit_defaults: false,
            use_proto_field_names: false,
            enums_as_ints: false,
            stream: StreamFormat::Array,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl ResponseOptions {
    fn serialize_options(&self) -> SerializeOptions {
        SerializeOptions::new()
            .skip_default_fields(!self.emit_defaults)
            .use_proto_field_name(self.use_proto_field_names)
            .use_enum_numbers(self.enums_as_ints)
    }
}

/// Decodes one (uncompressed) message payload.
pub fn decode_message(
    desc: MessageDescriptor,
    payload: &[u8],
) -> Result<DynamicMessage, TranscodeError> {
    let name = desc.full_name().to_owned();
    DynamicMessage::decode(desc, payload)
        .map_err(|e| TranscodeError::Response(format!("cannot decode {name}: {e}")))
}

/// Renders a message as JSON: the whole message, or only the
/// `response_body` field.
pub fn message_to_json(
    msg: &DynamicMessage,
    response_body: Option<&FieldDescriptor>,
    options: &ResponseOptions,
) -> Result<Vec<u8>, TranscodeError> {
    let ser = options.serialize_options();
    let to_value = |m: &DynamicMessage, ser: &SerializeOptions| {
        m.serialize_with_options(serde_json::value::Serializer, ser)
            .map_err(|e| TranscodeError::Response(e.to_string()))
    };
    let Some(field) = response_body else {
        let mut out = serde_json::Serializer::new(Vec::new());
        msg.serialize_with_options(&mut out, &ser)
            .map_err(|e| TranscodeError::Response(e.to_string()))?;
        return Ok(out.into_inner());
    };
    let key = if options.use_proto_field_names {
        field.name()
    } else {
        field.json_name()
    };
    // Only the selected field: render a copy holding just it, and take its key.
    let mut only = DynamicMessage::new(msg.descriptor());
    only.set_field(field, msg.get_field(field).into_owned());
    let mut value = to_value(&only, &ser)?;
    let selected = match value.get_mut(key).map(serde_json::Value::take) {
        Some(v) => v,
        // A default value was skipped: render it anyway.
        None => to_value(&only, &ser.clone().skip_default_fields(false))?
            .get_mut(key)
            .map(serde_json::Value::take)
            .unwrap_or(serde_json::Value::Null),
    };
    serde_json::to_vec(&selected).map_err(|e| TranscodeError::Response(e.to_string()))
}

/// Turns the upstream's response body (gRPC frames, in any chunking) into
/// the JSON body: one object for a unary method; for a server stream a JSON
/// array (or one object per line), emitted message by message.
#[derive(Debug)]
pub struct ResponseTranscoder {
    output: MessageDescriptor,
    response_body: Option<FieldDescriptor>,
    streaming: bool,
    options: ResponseOptions,
    decoder: FrameDecoder,
    messages: usize,
}

impl ResponseTranscoder {
    pub fn new(route: &Route, options: ResponseOptions) -> Self {
        ResponseTranscoder {
            output: route.method().output(),
            response_body: route.response_body().cloned(),
            streaming: route.method().is_server_streaming(),
            decoder: FrameDecoder::new(options.max_message_size),
            options,
            messages: 0,
        }
    }

    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// Messages decoded so far.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Feeds a chunk of the upstream body; returns the JSON bytes ready to
    /// send (possibly none).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TranscodeError> {
        self.decoder.push(chunk);
        let mut out = Vec::new();
        while let Some(frame) = self.decoder.next_frame().map_err(as_response)? {
            if frame.is_compressed() {
                return Err(TranscodeError::Response(
                    "compressed message (the gateway asks for identity encoding)".into(),
                ));
            }
            if frame.is_trailers() {
                return Err(TranscodeError::Response("unexpected trailer frame".into()));
            }
            if !self.streaming && self.messages > 0 {
                return Err(TranscodeError::Response(
                    "more than one message for a unary method".into(),
                ));
            }
            let msg = decode_message(self.output.clone(), &frame.payload)?;
            let json = message_to_json(&msg, self.response_body.as_ref(), &self.options)?;
            if self.streaming {
                match self.options.stream {
                    StreamFormat::Array => {
                        out.push(if self.messages == 0 { b'[' } else { b',' });
                        out.extend_from_slice(&json);
                    }
                    StreamFormat::NewlineDelimited => {
                        out.extend_from_slice(&json);
                        out.push(b'\n');
                    }
                    StreamFormat::ServerSentEvents => {
                        out.extend_from_slice(b"data: ");
                        out.extend_from_slice(&json);
                        out.extend_from_slice(b"\n\n");
                    }
                }
            } else {
                out.extend_from_slice(&json);
            }
            self.messages += 1;
        }
        Ok(out)
    }

    /// End of the upstream body: closes a JSON array. A unary call that
    /// produced no message yields nothing (the caller answers from the
    /// status instead).
    pub fn finish(&mut self) -> Result<Vec<u8>, TranscodeError> {
        self.decoder.finish().map_err(as_response)?;
        Ok(match (self.streaming, self.options.stream, self.messages) {
            (true, StreamFormat::Array, 0) => b"[]".to_vec(),
            (true, StreamFormat::Array, _) => b"]".to_vec(),
            _ => Vec::new(),
        })
    }
}

fn as_response(e: TranscodeError) -> TranscodeError {
    match e {
        TranscodeError::Frame(m) => TranscodeError::Response(m),
        other => other,
    }
}
