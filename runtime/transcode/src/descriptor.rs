//! Loading a FileDescriptorSet and reading each method's `google.api.http`
//! option through prost-reflect's dynamic extension support.

use prost_reflect::{DescriptorPool, DynamicMessage, ExtensionDescriptor, MethodDescriptor, Value};

use crate::error::ConfigError;

/// Full name of the `google.api.http` extension of `MethodOptions`.
pub const HTTP_EXTENSION: &str = "google.api.http";
/// Its field number (from google/api/annotations.proto).
pub const HTTP_EXTENSION_NUMBER: u32 = 72295728;

/// Decodes and validates a serialized `google.protobuf.FileDescriptorSet`
/// (as written by `protoc --include_imports --descriptor_set_out` or
/// `protox`). Every import must be in the set.
pub fn load_descriptor_set(bytes: &[u8]) -> Result<DescriptorPool, ConfigError> {
    let pool = DescriptorPool::decode(bytes).map_err(|e| ConfigError::Descriptor(e.to_string()))?;
    // A set built without google/api/annotations.proto still carries the
    // annotations, but only as unknown fields of MethodOptions: say so
    // rather than silently mapping every method to its default route.
    if pool.get_extension_by_name(HTTP_EXTENSION).is_none() {
        for service in pool.services() {
            for method in service.methods() {
                if method
                    .options()
                    .unknown_fields()
                    .any(|f| f.number() == HTTP_EXTENSION_NUMBER)
                {
                    return Err(ConfigError::Descriptor(format!(
                        "method {} has a google.api.http option but the set does not include \
                         google/api/annotations.proto (build it with its imports)",
                        method.full_name()
                    )));
                }
            }
        }
    }
    Ok(pool)
}

/// What a rule's pattern says about the HTTP method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpMethodSpec {
    Get,
    Put,
    Post,
    Delete,
    Patch,
    /// `custom { kind: "HEAD" }`; `"*"` means any method.
    Custom(String),
}

impl HttpMethodSpec {
    /// `None` for the wildcard `custom { kind: "*" }`.
    pub fn to_http(&self) -> Result<Option<http::Method>, String> {
        Ok(Some(match self {
            HttpMethodSpec::Get => http::Method::GET,
            HttpMethodSpec::Put => http::Method::PUT,
            HttpMethodSpec::Post => http::Method::POST,
            HttpMethodSpec::Delete => http::Method::DELETE,
            HttpMethodSpec::Patch => http::Method::PATCH,
            HttpMethodSpec::Custom(kind) if kind == "*" => return Ok(None),
            HttpMethodSpec::Custom(kind) => http::Method::from_bytes(kind.as_bytes())
                .map_err(|_| format!("invalid custom HTTP method {kind:?}"))?,
        }))
    }
}

/// A `google.api.HttpRule`, read from the dynamic option message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRule {
    pub method: HttpMethodSpec,
    pub path: String,
    /// "" (no body), "*" (whole message) or a top-level field name.
    pub body: String,
    /// "" (whole response) or a top-level field name.
    pub response_body: String,
    pub additional_bindings: Vec<HttpRule>,
}

/// The method's `google.api.http` rule, if annotated.
pub fn http_rule(method: &MethodDescriptor) -> Result<Option<HttpRule>, ConfigError> {
    let Some(ext) = http_extension(method) else {
        return Ok(None);
    };
    let options = method.options();
    if !options.has_extension(&ext) {
        return Ok(None);
    }
    let rule_err = |message: String| ConfigError::Rule {
        method: method.full_name().to_owned(),
        message,
    };
    match options.get_extension(&ext).as_ref() {
        Value::Message(rule) => parse_rule(rule, true).map(Some).map_err(rule_err),
        other => Err(rule_err(format!(
            "google.api.http is not a message: {other:?}"
        ))),
    }
}

fn http_extension(method: &MethodDescriptor) -> Option<ExtensionDescriptor> {
    method.parent_pool().get_extension_by_name(HTTP_EXTENSION)
}

fn parse_rule(rule: &DynamicMessage, top_level: bool) -> Result<HttpRule, String> {
    let string = |name: &str| -> String {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    // `pattern` is a oneof: exactly one of these is set.
    let mut pattern = None;
    for (name, spec) in [
        ("get", HttpMethodSpec::Get),
        ("put", HttpMethodSpec::Put),
        ("post", HttpMethodSpec::Post),
        ("delete", HttpMethodSpec::Delete),
        ("patch", HttpMethodSpec::Patch),
    ] {
        if rule.has_field_by_name(name) {
            pattern = Some((spec, string(name)));
        }
    }
    if rule.has_field_by_name("custom") {
        let custom = rule
            .get_field_by_name("custom")
            .ok_or("custom is missing")?;
        let custom = custom.as_message().ok_or("custom is not a message")?;
        let get = |n: &str| {
            custom
                .get_field_by_name(n)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        pattern = Some((HttpMethodSpec::Custom(get("kind")), get("path")));
    }
    let (method, path) = pattern.ok_or("the rule has no pattern (get, post, ... or custom)")?;
    if let HttpMethodSpec::Custom(kind) = &method
        && kind.is_empty()
    {
        return Err("custom pattern without a kind".into());
    }
    let mut additional_bindings = Vec::new();
    if let Some(list) = rule.get_field_by_name("additional_bindings") {
        for binding in list.as_list().unwrap_or_default() {
            let binding = binding
                .as_message()
                .ok_or("additional binding is not a message")?;
            if !top_level {
                return Err("additional_bindings may only be one level deep".into());
            }
            additional_bindings.push(parse_rule(binding, false)?);
        }
    }
    Ok(HttpRule {
        method,
        path,
        body: string("body"),
        response_body: string("response_body"),
        additional_bindings,
    })
}
