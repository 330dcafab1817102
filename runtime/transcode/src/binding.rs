//! Binding string values (path captures, query parameters) into fields of a
//! request message, with proto3-JSON-compatible conversions.

use base64::Engine as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use crate::error::TranscodeError;

/// Well-known message types whose JSON form is a string (or a scalar for
/// wrappers), so they can be bound from a path or query value.
const STRING_LIKE_WKT: &[&str] = &[
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
];

fn is_wrapper(desc: &MessageDescriptor) -> bool {
    matches!(
        desc.full_name(),
        "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// Whether a (non-repeated part of a) field can take a single string value.
pub(crate) fn is_bindable_leaf(field: &FieldDescriptor) -> bool {
    match field.kind() {
        Kind::Message(m) => is_wrapper(&m) || STRING_LIKE_WKT.contains(&m.full_name()),
        _ => true,
    }
}

/// Resolves a dotted field path. Intermediate fields must be singular
/// messages. With `json_names`, each part may also be the lowerCamel name.
pub(crate) fn resolve_path(
    desc: &MessageDescriptor,
    path: &[impl AsRef<str>],
    json_names: bool,
) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields = Vec::with_capacity(path.len());
    let mut current = desc.clone();
    for (i, part) in path.iter().enumerate() {
        let part = part.as_ref();
        let field = current
            .get_field_by_name(part)
            .or_else(|| {
                json_names
                    .then(|| current.get_field_by_json_name(part))
                    .flatten()
            })
            .ok_or_else(|| format!("no field {part:?} in {}", current.full_name()))?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() && !is_leafish(&m) => {
                    current = m
                }
                _ => return Err(format!("{part:?} is not a singular message field")),
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

fn is_leafish(m: &MessageDescriptor) -> bool {
    is_wrapper(m) || STRING_LIKE_WKT.contains(&m.full_name())
}

/// Sets (or, for a repeated leaf, appends) `raw` at `fields` in `msg`.
/// `display` names the field in errors.
pub(crate) fn bind(
    msg: &mut DynamicMessage,
    fields: &[FieldDescriptor],
    raw: &str,
    display: &str,
) -> Result<(), TranscodeError> {
    let (leaf, parents) = fields.split_last().expect("a field path is never empty");
    let mut target = msg;
    for field in parents {
        target = target
            .get_field_mut(field)
            .as_message_mut()
            .expect("intermediate fields are validated to be messages");
    }
    let value = parse_value(leaf, raw).map_err(|m| TranscodeError::field(display, m))?;
    if leaf.is_map() {
        return Err(TranscodeError::field(
            display,
            "a map field cannot be bound from a string",
        ));
    }
    if leaf.is_list() {
        match target.get_field_mut(leaf) {
            Value::List(list) => list.push(value),
            _ => unreachable!("a repeated field holds a list"),
        }
    } else {
        target.set_field(leaf, value);
    }
    Ok(())
}

/// Converts one string to a value of the field's (element) type.
pub(crate) fn parse_value(field: &FieldDescriptor, raw: &str) -> Result<Value, String> {
    match field.kind() {
        Kind::Message(m) if is_wrapper(&m) => {
            let inner = m.get_field_by_name("value").expect("wrappers have `value`");
            let mut msg = DynamicMessage::new(m);
            msg.set_field(&inner, parse_scalar(&inner.kind(), raw)?);
            Ok(Value::Message(msg))
        }
        Kind::Message(m) if STRING_LIKE_WKT.contains(&m.full_name()) => {
            let json = serde_json::Value::String(raw.to_owned());
            DynamicMessage::deserialize(m.clone(), json)
                .map(Value::Message)
                .map_err(|e| format!("invalid value {raw:?} for {}: {e}", m.full_name()))
        }
        Kind::Message(m) => Err(format!(
            "message {} cannot be set from a string; bind its fields instead",
            m.full_name()
        )),
        kind => parse_scalar(&kind, raw),
    }
}

fn parse_scalar(kind: &Kind, raw: &str) -> Result<Value, String> {
    fn num<T: std::str::FromStr>(raw: &str, ty: &str) -> Result<T, String> {
        raw.parse::<T>()
            .map_err(|_| format!("invalid value {raw:?} for {ty}"))
    }
    Ok(match kind {
        Kind::Double => Value::F64(parse_float(raw).ok_or_else(|| invalid(raw, "double"))?),
        Kind::Float => Value::F32(parse_float(raw).ok_or_else(|| invalid(raw, "float"))? as f32),
        Kind::Int32 => Value::I32(num(raw, "int32")?),
        Kind::Sint32 => Value::I32(num(raw, "sint32")?),
        Kind::Sfixed32 => Value::I32(num(raw, "sfixed32")?),
        Kind::Int64 => Value::I64(num(raw, "int64")?),
        Kind::Sint64 => Value::I64(num(raw, "sint64")?),
        Kind::Sfixed64 => Value::I64(num(raw, "sfixed64")?),
        Kind::Uint32 => Value::U32(num(raw, "uint32")?),
        Kind::Fixed32 => Value::U32(num(raw, "fixed32")?),
        Kind::Uint64 => Value::U64(num(raw, "uint64")?),
        Kind::Fixed64 => Value::U64(num(raw, "fixed64")?),
        Kind::Bool => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(invalid(raw, "bool")),
        },
        Kind::String => Value::String(raw.to_owned()),
        Kind::Bytes => Value::Bytes(
            decode_base64(raw)
                .ok_or_else(|| invalid(raw, "bytes"))?
                .into(),
        ),
        Kind::Enum(e) => {
            if let Some(v) = e.get_value_by_name(raw) {
                Value::EnumNumber(v.number())
            } else if let Ok(n) = raw.parse::<i32>() {
                Value::EnumNumber(n)
            } else {
                return Err(invalid(raw, e.full_name()));
            }
        }
        Kind::Message(_) => unreachable!("messages are handled by parse_value"),
    })
}

fn invalid(raw: &str, ty: &str) -> String {
    format!("invalid value {raw:?} for {ty}")
}

/// Decimal, or the proto3 JSON special values.
fn parse_float(raw: &str) -> Option<f64> {
    match raw {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        // Rust also accepts "inf"/"nan" spellings; proto3 JSON does not.
        _ if raw
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E')) =>
        {
            None
        }
        _ => raw.parse().ok(),
    }
}

/// proto3 JSON accepts standard or URL-safe base64, padded or not.
fn decode_base64(raw: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = raw.trim_end_matches('=');
    if trimmed.contains(['-', '_']) {
        URL_SAFE_NO_PAD.decode(trimmed).ok()
    } else {
        STANDARD_NO_PAD.decode(trimmed).ok()
    }
}
