//! Building the gRPC request message from an HTTP request: body JSON first,
//! then path variables, then query parameters.

use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};

use crate::binding;
use crate::error::TranscodeError;
use crate::percent::{self, Decode};
use crate::router::{BodyRule, RouteMatch};

/// Request-side options.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// Drop JSON body fields the message does not have, instead of
    /// answering 400 (the proto3 JSON default is to refuse them).
    pub ignore_unknown_fields: bool,
    /// Drop query parameters that name no field, instead of answering 400.
    pub ignore_unknown_query_parameters: bool,
    /// Query parameters never bound (e.g. `key`, `access_token`).
    pub ignored_query_parameters: Vec<String>,
    /// Decode '+' in query strings as a space (HTML forms). Off by default,
    /// as in Envoy's transcoder.
    pub query_plus_as_space: bool,
}

/// Builds the request message for a matched route. `query` is the raw query
/// string without '?'; `body` the whole HTTP request body. A body sent to a
/// binding without `body` is ignored (as Envoy does); an empty or
/// whitespace-only body is an empty message.
pub fn build_request(
    m: &RouteMatch<'_>,
    query: Option<&str>,
    body: &[u8],
    options: &RequestOptions,
) -> Result<DynamicMessage, TranscodeError> {
    let input = m.route.method().input();
    let has_body = body.iter().any(|b| !b.is_ascii_whitespace());
    let mut msg = match m.route.body() {
        BodyRule::Whole if has_body => deserialize_json(input.clone(), body, "", options)?,
        BodyRule::Field(field) if has_body => body_field(input.clone(), field, body, options)?,
        _ => DynamicMessage::new(input.clone()),
    };

    for (fields, value) in m.route.variables().iter().zip(&m.captures) {
        binding::bind(&mut msg, fields, value, &dotted(fields))?;
    }

    if let Some(query) = query {
        bind_query(m, &mut msg, &input, query, options)?;
    }
    Ok(msg)
}

fn bind_query(
    m: &RouteMatch<'_>,
    msg: &mut DynamicMessage,
    input: &MessageDescriptor,
    query: &str,
    options: &RequestOptions,
) -> Result<(), TranscodeError> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent::decode(raw_key, Decode::All, options.query_plus_as_space)
            .ok_or_else(|| TranscodeError::UnknownQueryParameter(raw_key.to_owned()))?;
        if options.ignored_query_parameters.contains(&key) {
            continue;
        }
        // With `body: "*"` every field is in the body: no query binding.
        let resolved = match m.route.body() {
            BodyRule::Whole => Err(String::new()),
            _ => binding::resolve_path(input, &key.split('.').collect::<Vec<_>>(), true),
        };
        let fields = match resolved {
            Ok(fields) => fields,
            Err(_) if options.ignore_unknown_query_parameters => continue,
            Err(_) => return Err(TranscodeError::UnknownQueryParameter(key)),
        };
        if let BodyRule::Field(body_field) = m.route.body()
            && fields[0] == *body_field
        {
            return Err(TranscodeError::field(
                &key,
                "cannot be set by a query parameter: it is in the request body",
            ));
        }
        if m.route.variables().contains(&fields) {
            return Err(TranscodeError::field(
                &key,
                "cannot be set by a query parameter: it is bound by the URL path",
            ));
        }
        let value = percent::decode(raw_value, Decode::All, options.query_plus_as_space)
            .ok_or_else(|| TranscodeError::field(&key, "value is not valid UTF-8"))?;
        binding::bind(msg, &fields, &value, &key)?;
    }
    Ok(())
}

/// `body: "field"`: a message field is deserialized as its own message; any
/// other field (scalar, repeated, map) through a one-key wrapper object.
fn body_field(
    input: MessageDescriptor,
    field: &FieldDescriptor,
    body: &[u8],
    options: &RequestOptions,
) -> Result<DynamicMessage, TranscodeError> {
    match field.kind() {
        Kind::Message(m) if !field.is_list() && !field.is_map() => {
            let sub = deserialize_json(m, body, field.name(), options)?;
            let mut msg = DynamicMessage::new(input);
            msg.set_field(field, prost_reflect::Value::Message(sub));
            Ok(msg)
        }
        _ => {
            // Parse first so a body like `1, "other": 2` cannot smuggle in
            // fields outside the selected one.
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| TranscodeError::Body(e.to_string()))?;
            let wrapped =
                serde_json::Value::Object([(field.name().to_owned(), value)].into_iter().collect());
            let bytes = serde_json::to_vec(&wrapped).expect("a JSON value serializes");
            deserialize_json(input, &bytes, "", options)
        }
    }
}

/// Proto3 JSON → message, naming the offending field on error.
fn deserialize_json(
    desc: MessageDescriptor,
    body: &[u8],
    prefix: &str,
    options: &RequestOptions,
) -> Result<DynamicMessage, TranscodeError> {
    let desc_for_errors = desc.clone();
    let de_options = DeserializeOptions::new().deny_unknown_fields(!options.ignore_unknown_fields);
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let result = DynamicMessage::deserialize_with_options(
        desc,
        serde_path_to_error::Deserializer::new(&mut de, &mut track),
        &de_options,
    );
    let msg = result.map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            return TranscodeError::Body(e.to_string());
        }
        let tracked = track.path();
        let expected = expected_type(&desc_for_errors, &tracked);
        let path = tracked.to_string();
        let path = match (prefix, path.as_str()) {
            (p, ".") => p.to_owned(),
            ("", p) => p.to_owned(),
            (prefix, p) => format!("{prefix}.{p}"),
        };
        if path.is_empty() {
            TranscodeError::Body(e.to_string())
        } else {
            let message = strip_position(&e);
            match expected {
                Some(ty) => TranscodeError::field(path, format!("expected {ty}: {message}")),
                None => TranscodeError::field(path, message),
            }
        }
    })?;
    de.end().map_err(|e| TranscodeError::Body(e.to_string()))?;
    Ok(msg)
}

/// The proto type at a JSON path (`book.publishTime`, `tags[1]`,
/// `counts.a`), for error messages; `None` when the path ends on a message
/// or does not resolve.
fn expected_type(desc: &MessageDescriptor, path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut message = desc.clone();
    let mut pending: Option<FieldDescriptor> = None; // a list or map awaiting its index/key
    let mut leaf: Option<Kind> = None;
    for segment in path.iter() {
        let kind = match (segment, pending.take()) {
            (Segment::Seq { .. }, Some(f)) if f.is_list() => f.kind(),
            (Segment::Map { .. }, Some(f)) if f.is_map() => {
                let entry = f.kind();
                entry.as_message()?.map_entry_value_field().kind()
            }
            (Segment::Map { key }, None) if leaf.is_none() => {
                let f = message
                    .get_field_by_name(key)
                    .or_else(|| message.get_field_by_json_name(key))?;
                if f.is_list() || f.is_map() {
                    pending = Some(f);
                    continue;
                }
                f.kind()
            }
            _ => return None,
        };
        match kind {
            Kind::Message(m) if !m.full_name().starts_with("google.protobuf.") => {
                message = m;
                leaf = None;
            }
            other => leaf = Some(other),
        }
    }
    if pending.is_some() {
        return None;
    }
    leaf.map(|k| match k {
        Kind::Enum(e) => e.full_name().to_owned(),
        Kind::Message(m) => m.full_name().to_owned(),
        other => format!("{other:?}").to_lowercase(),
    })
}

/// serde_json appends " at line L column C"; the field path says more.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn dotted(fields: &[FieldDescriptor]) -> String {
    fields
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(".")
}
