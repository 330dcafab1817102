//! Protocol translation settings: `[descriptors.NAME]` (a protobuf
//! descriptor set the routes transcode with) and a route's `transcode`
//! and `grpc_web` keys.
//!
//! ```toml
//! [descriptors.bookstore]
//! path = "protos/bookstore.pb"      # protoc --include_imports --descriptor_set_out
//!
//! [[routes]]
//! name = "books"
//! path_prefix = "/v1"
//! cluster = "bookstore"             # protocol = "h2c" or "h2"
//! transcode = { descriptor = "bookstore", stream = "ndjson" }
//! grpc_web = true
//! ```
//!
//! What is checked here: names, paths, option values, and how these keys
//! combine with the route's other keys. The set's bytes are read and
//! parsed when a gateway is built from the config (and `wasmgate check`
//! does so too), where a bad set is refused with the parser's reason under
//! `descriptors.NAME.path`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDescriptor {
    path: String,
}

/// `[descriptors.NAME]`: a binary `FileDescriptorSet` (with its imports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorConfig {
    /// The file, resolved against the config's folder.
    pub path: PathBuf,
}

/// How a server stream is written to a JSON client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamMode {
    /// One JSON array (the default).
    #[default]
    Array,
    /// One JSON message per line.
    Ndjson,
    /// Server-sent events.
    Sse,
}

/// A route's `transcode = { ... }`: JSON/HTTP requests become gRPC calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscodeConfig {
    /// The `[descriptors.NAME]` entry it transcodes with.
    pub descriptor: String,
    /// The services it routes (full names); empty: every service in the set.
    pub services: Vec<String>,
    /// How server streams are written.
    pub stream: StreamMode,
    /// Drop JSON fields the message does not have instead of answering 400.
    pub ignore_unknown_fields: bool,
    /// Query parameters never bound to a field (e.g. an API key's).
    pub ignored_query_parameters: Vec<String>,
    /// Write fields that hold their default value (proto3 JSON omits them).
    pub emit_defaults: bool,
    /// Write `snake_case` proto field names instead of lowerCamel.
    pub use_proto_field_names: bool,
    /// Write enums as numbers instead of names.
    pub enums_as_ints: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTranscode {
    descriptor: String,
    #[serde(default)]
    services: Vec<String>,
    stream: Option<String>,
    unknown_fields: Option<String>,
    #[serde(default)]
    ignored_query_parameters: Vec<String>,
    #[serde(default)]
    emit_defaults: bool,
    #[serde(default)]
    use_proto_field_names: bool,
    #[serde(default)]
    enums_as_ints: bool,
}

/// Validates `[descriptors]`.
pub(crate) fn validate_descriptors(
    raw: BTreeMap<String, RawDescriptor>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, DescriptorConfig> {
    let mut out = BTreeMap::new();
    for (name, d) in raw {
        let key = format!("descriptors.{name}");
        if !crate::is_valid_name(&name) {
            errors.push(ConfigError::new(
                &key,
                format!(
                    "{name:?}: descriptor names use letters, digits, '-', '_' and '.' (at most 64)"
                ),
            ));
            continue;
        }
        if d.path.trim().is_empty() {
            errors.push(ConfigError::new(
                format!("{key}.path"),
                "must name a descriptor set file (protoc --include_imports --descriptor_set_out=FILE)",
            ));
            continue;
        }
        out.insert(
            name,
            DescriptorConfig {
                path: base.join(&d.path),
            },
        );
    }
    out
}

/// A scope's `[descriptors]` (`None` for a tenant: descriptor sets are the
/// operator's, so a tenant's route cannot transcode) and what its routes
/// ask of them: the sets they name exist, and the clusters they speak gRPC
/// to speak HTTP/2.
pub(crate) fn validate_scope(
    raw_descriptors: Option<BTreeMap<String, RawDescriptor>>,
    names: &crate::route::Names,
    clusters: &BTreeMap<String, crate::ClusterConfig>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, DescriptorConfig> {
    let operator = raw_descriptors.is_some();
    let descriptors = raw_descriptors
        .map(|d| validate_descriptors(d, base, errors))
        .unwrap_or_default();
    for (key, d) in &names.descriptors {
        if !operator {
            errors.push(ConfigError::new(
                key,
                "descriptor sets are the operator's: a tenant's route cannot transcode yet \
                 (gRPC-Web and plain gRPC work)",
            ));
        } else if !descriptors.contains_key(d) {
            errors.push(ConfigError::new(
                key,
                format!(
                    "unknown descriptor set {d:?} (defined: {})",
                    crate::list(descriptors.keys())
                ),
            ));
        }
    }
    // gRPC is HTTP/2: a route that speaks it to its clusters needs them to.
    for (key, c) in &names.grpc_clusters {
        if let Some(cluster) = clusters.get(c)
            && cluster.protocol == crate::cluster::UpstreamProtocol::Http1
        {
            errors.push(ConfigError::new(
                key,
                format!(
                    "cluster {c:?} speaks HTTP/1.1, and this route sends it gRPC: \
                     set its protocol to \"h2c\" (or \"h2\" with tls)"
                ),
            ));
        }
    }
    descriptors
}

/// Validates a route's `transcode` table; `key` is the route's key path.
pub(crate) fn validate_transcode(
    raw: RawTranscode,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> TranscodeConfig {
    let key = format!("{key}.transcode");
    let stream = match raw.stream.as_deref() {
        None | Some("array") => StreamMode::Array,
        Some("ndjson") => StreamMode::Ndjson,
        Some("sse") => StreamMode::Sse,
        Some(other) => {
            errors.push(ConfigError::new(
                format!("{key}.stream"),
                format!("{other:?} is not one of \"array\" (the default), \"ndjson\" or \"sse\""),
            ));
            StreamMode::Array
        }
    };
    let ignore_unknown_fields = match raw.unknown_fields.as_deref() {
        None | Some("refuse") => false,
        Some("ignore") => true,
        Some(other) => {
            errors.push(ConfigError::new(
                format!("{key}.unknown_fields"),
                format!("{other:?} is not one of \"refuse\" (the default) or \"ignore\""),
            ));
            false
        }
    };
    for (i, s) in raw.services.iter().enumerate() {
        let valid = !s.is_empty()
            && s.split('.').all(|part| {
                !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
        if !valid {
            errors.push(ConfigError::new(
                format!("{key}.services[{i}]"),
                format!("{s:?} is not a full service name (package.Service)"),
            ));
        } else if raw.services[..i].contains(s) {
            errors.push(ConfigError::new(
                format!("{key}.services[{i}]"),
                format!("{s:?} is listed twice"),
            ));
        }
    }
    TranscodeConfig {
        descriptor: raw.descriptor,
        services: raw.services,
        stream,
        ignore_unknown_fields,
        ignored_query_parameters: raw.ignored_query_parameters,
        emit_defaults: raw.emit_defaults,
        use_proto_field_names: raw.use_proto_field_names,
        enums_as_ints: raw.enums_as_ints,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::Config;

    const CLUSTERS: &str = "[clusters.grpc]\nprotocol = \"h2c\"\nendpoints = [\"127.0.0.1:50051\"]\n\
                            [clusters.web]\nendpoints = [\"127.0.0.1:8080\"]\n";

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(&format!("{CLUSTERS}{text}"), "t.toml", Path::new("/srv")) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_transcoded_route_and_its_descriptor_set() {
        let text = format!(
            "{CLUSTERS}[descriptors.books]\npath = \"protos/books.pb\"\n\
             [[routes]]\nname = \"books\"\npath_prefix = \"/v1\"\ncluster = \"grpc\"\ngrpc_web = true\n\
             transcode = {{ descriptor = \"books\", services = [\"bookstore.v1.Bookstore\"], \
             stream = \"sse\", unknown_fields = \"ignore\", ignored_query_parameters = [\"key\"], \
             emit_defaults = true }}\n\
             [[routes]]\nname = \"plain\"\ncluster = \"grpc\"\n"
        );
        let c = Config::parse(&text, "t.toml", Path::new("/srv")).unwrap();
        assert_eq!(
            c.descriptors["books"].path,
            Path::new("/srv/protos/books.pb")
        );
        let t = c.routes[0].transcode.as_ref().unwrap();
        assert_eq!(t.descriptor, "books");
        assert_eq!(t.services, ["bookstore.v1.Bookstore"]);
        assert_eq!(t.stream, StreamMode::Sse);
        assert!(t.ignore_unknown_fields && t.emit_defaults);
        assert!(!t.use_proto_field_names && !t.enums_as_ints);
        assert_eq!(t.ignored_query_parameters, ["key"]);
        assert!(c.routes[0].grpc_web);
        assert_eq!(c.routes[1].transcode, None);
        assert!(!c.routes[1].grpc_web);
        // The set's file is named to what a config put through the API may reach.
        assert!(c.reach().iter().any(|(k, _)| k == "descriptors.books.path"));
    }

    /// Every kind of bad setting, once.
    const BAD: &str = "[descriptors.\"bad name\"]\npath = \"x.pb\"\n[descriptors.empty]\npath = \" \"\n\
        [[routes]]\nname = \"a\"\ncluster = \"grpc\"\n\
        transcode = { descriptor = \"missing\", stream = \"chunks\", unknown_fields = \"drop\", \
        services = [\"a..B\", \"x.Y\", \"x.Y\"] }\n\
        [[routes]]\nname = \"b\"\ncluster = \"web\"\ngrpc_web = true\n\
        [[routes]]\nname = \"c\"\nrespond = { status = 200 }\ngrpc_web = true\n\
        [[routes]]\nname = \"d\"\npath_prefix = \"/d\"\nprefix_rewrite = \"/e\"\ncluster = \"grpc\"\n\
        transcode = { descriptor = \"empty\" }\n";

    #[test]
    fn bad_settings_are_named_by_key_path() {
        // A key the table does not have stops parsing, naming it.
        let e = errors(&format!(
            "{BAD}[[routes]]\nname = \"e\"\ncluster = \"grpc\"\ntranscode = {{ descriptor = \"x\", colour = 1 }}\n"
        ));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("routes[4].transcode.colour: unknown field `colour`"),
            "{e:?}"
        );
        let e = errors(BAD);
        let want = [
            "routes[0].transcode.stream: \"chunks\" is not one of \"array\" (the default), \"ndjson\" or \"sse\"",
            "routes[0].transcode.unknown_fields: \"drop\" is not one of \"refuse\" (the default) or \"ignore\"",
            "routes[0].transcode.services[0]: \"a..B\" is not a full service name (package.Service)",
            "routes[0].transcode.services[2]: \"x.Y\" is listed twice",
            "routes[2].grpc_web: translates requests for a cluster; this route answers itself",
            "routes[3].prefix_rewrite: a transcoded route sends each call to its gRPC method's path: prefix_rewrite does not apply",
            "descriptors.bad name: \"bad name\": descriptor names use letters, digits, '-', '_' and '.' (at most 64)",
            "descriptors.empty.path: must name a descriptor set file (protoc --include_imports --descriptor_set_out=FILE)",
            "routes[0].transcode.descriptor: unknown descriptor set \"missing\" (defined: none)",
            "routes[3].transcode.descriptor: unknown descriptor set \"empty\" (defined: none)",
            "routes[1].cluster: cluster \"web\" speaks HTTP/1.1, and this route sends it gRPC: set its protocol to \"h2c\" (or \"h2\" with tls)",
        ];
        for w in want {
            assert!(e.iter().any(|e| e == w), "missing {w:?} in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn a_tenants_route_cannot_transcode() {
        let t = crate::TenantConfig::parse(
            "shop",
            "hosts = [\"shop.example\"]\n[clusters.g]\nprotocol = \"h2c\"\nendpoints = [\"127.0.0.1:1\"]\n\
             [[routes]]\nname = \"r\"\ncluster = \"g\"\ngrpc_web = true\ntranscode = { descriptor = \"d\" }\n",
            "shop.toml",
            Path::new("/srv"),
            crate::Managed::Api,
            &crate::EngineConfig::default(),
        )
        .unwrap_err();
        let e: Vec<String> = t.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            e,
            [
                "routes[0].transcode.descriptor: descriptor sets are the operator's: a tenant's route \
              cannot transcode yet (gRPC-Web and plain gRPC work)"
            ]
        );
    }
}
