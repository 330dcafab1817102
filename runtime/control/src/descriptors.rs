//! The descriptor sets transcoding routes use (`[descriptors.NAME]`): read
//! from the file the config names at every build, or put in its place
//! through the admin API (`PUT /descriptors/NAME`) without a restart.
//!
//! An uploaded set replaces the file's until the config points the entry
//! at another file (or drops it), as an uploaded filter module pins its
//! filter. With `admin.data_dir`, uploaded sets are kept there
//! (`descriptors/<sha256>.pb`) and put back at start; without one, a
//! restart reads the files again.
//! Parsed sets are kept by content hash, so a rebuild that finds the same
//! bytes does not parse them again.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost_reflect::DescriptorPool;
use wasmgate_config::DescriptorConfig;

/// The largest descriptor set taken (from a file or the API).
pub const MAX_DESCRIPTOR_SET: usize = 16 << 20;

/// Where a set's bytes came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetSource {
    /// The file the config names.
    File(PathBuf),
    /// The admin API.
    Api,
}

/// A set as one generation uses it.
#[derive(Debug, Clone)]
pub struct LoadedSet {
    /// Its messages and services.
    pub pool: DescriptorPool,
    /// The sha256 of its bytes, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: usize,
    /// Where it came from.
    pub source: SetSource,
}

impl LoadedSet {
    /// What the admin API shows of it.
    pub fn describe(&self, name: &str) -> serde_json::Value {
        let services: Vec<serde_json::Value> = self
            .pool
            .services()
            .map(|s| {
                let methods: Vec<serde_json::Value> = s
                    .methods()
                    .map(|m| {
                        serde_json::json!({
                            "name": m.name(),
                            "input": m.input().full_name(),
                            "output": m.output().full_name(),
                            "client_streaming": m.is_client_streaming(),
                            "server_streaming": m.is_server_streaming(),
                        })
                    })
                    .collect();
                serde_json::json!({ "name": s.full_name(), "methods": methods })
            })
            .collect();
        serde_json::json!({
            "name": name,
            "sha256": self.sha256,
            "size": self.size,
            "source": match &self.source {
                SetSource::File(p) => serde_json::json!({ "file": p.display().to_string() }),
                SetSource::Api => serde_json::json!("api"),
            },
            "services": services,
        })
    }
}

#[derive(Debug, Clone)]
struct Uploaded {
    bytes: Arc<Vec<u8>>,
    /// The file the config named when it was uploaded: it stands in for
    /// that file only.
    replaces: PathBuf,
}

/// Uploaded sets and parsed ones, shared by every build.
#[derive(Debug, Default)]
pub struct DescriptorStore {
    uploaded: Mutex<BTreeMap<String, Uploaded>>,
    parsed: Mutex<HashMap<String, DescriptorPool>>,
}

impl DescriptorStore {
    /// The set for the operator's `[descriptors.NAME]`: the uploaded one
    /// if it still stands in for the file the config names, else the
    /// file's. The error names the problem (unreadable, too large, not a
    /// descriptor set, ...).
    pub(crate) fn load(&self, name: &str, config: &DescriptorConfig) -> Result<LoadedSet, String> {
        let uploaded = self
            .uploaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .filter(|u| u.replaces == config.path)
            .cloned();
        let (bytes, source) = match uploaded {
            Some(u) => (u.bytes, SetSource::Api),
            None => (
                Arc::new(read_file(&config.path)?),
                SetSource::File(config.path.clone()),
            ),
        };
        let mut set = self.parse(&bytes)?;
        set.source = source;
        Ok(set)
    }

    /// Every set of the operator's `[descriptors]`; each that does not load
    /// is reported to `error` under `descriptors.NAME.path`.
    pub(crate) fn load_all(
        &self,
        sets: &BTreeMap<String, DescriptorConfig>,
        mut error: impl FnMut(wasmgate_config::ConfigError),
    ) -> BTreeMap<String, LoadedSet> {
        let mut loaded = BTreeMap::new();
        for (name, d) in sets {
            match self.load(name, d) {
                Ok(set) => {
                    loaded.insert(name.clone(), set);
                }
                Err(e) => error(wasmgate_config::ConfigError::new(
                    format!("descriptors.{name}.path"),
                    e,
                )),
            }
        }
        loaded
    }

    /// Parses `bytes` (or finds them parsed already).
    pub(crate) fn parse(&self, bytes: &[u8]) -> Result<LoadedSet, String> {
        let sha256 = wasmgate_engine::sha256_hex(bytes);
        let known = self
            .parsed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&sha256)
            .cloned();
        let pool = match known {
            Some(pool) => pool,
            None => {
                let pool = wasmgate_transcode::descriptor::load_descriptor_set(bytes)
                    .map_err(|e| e.to_string())?;
                // Its HTTP rules too: a rule that does not parse refuses the set.
                wasmgate_transcode::router::Router::from_pool(&pool).map_err(|e| e.to_string())?;
                self.parsed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(sha256.clone(), pool.clone());
                pool
            }
        };
        Ok(LoadedSet {
            pool,
            sha256,
            size: bytes.len(),
            source: SetSource::Api,
        })
    }

    /// Puts `bytes` in place of the file `replaces` for `name`; returns
    /// what stood there before, to put back if the change is refused.
    pub(crate) fn put(&self, name: &str, bytes: Vec<u8>, replaces: &Path) -> Option<Arc<Vec<u8>>> {
        let mut uploaded = self.uploaded.lock().unwrap_or_else(|e| e.into_inner());
        uploaded
            .insert(
                name.to_owned(),
                Uploaded {
                    bytes: Arc::new(bytes),
                    replaces: replaces.to_path_buf(),
                },
            )
            .map(|u| u.bytes)
    }

    /// Puts back what [`DescriptorStore::put`] replaced.
    pub(crate) fn restore(&self, name: &str, before: Option<Arc<Vec<u8>>>, replaces: &Path) {
        let mut uploaded = self.uploaded.lock().unwrap_or_else(|e| e.into_inner());
        match before {
            Some(bytes) => {
                uploaded.insert(
                    name.to_owned(),
                    Uploaded {
                        bytes,
                        replaces: replaces.to_path_buf(),
                    },
                );
            }
            None => {
                uploaded.remove(name);
            }
        }
    }

    /// The sets put through the API, for the data directory: (name, bytes,
    /// the file each stands in for).
    pub(crate) fn uploaded(&self) -> Vec<(String, Arc<Vec<u8>>, PathBuf)> {
        self.uploaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, u)| (n.clone(), u.bytes.clone(), u.replaces.clone()))
            .collect()
    }

    /// Puts back the sets a data directory kept, in place of any uploaded
    /// now. An error names the set whose bytes could not be read.
    pub(crate) fn restore_saved(
        &self,
        dir: &crate::store::DataDir,
        saved: &crate::store::Saved,
    ) -> Result<(), (String, String)> {
        let mut kept = BTreeMap::new();
        for (name, d) in &saved.descriptors {
            let bytes = dir.descriptor(&d.sha256).map_err(|e| (name.clone(), e))?;
            kept.insert(
                name.clone(),
                Uploaded {
                    bytes: Arc::new(bytes),
                    replaces: d.replaces.clone(),
                },
            );
        }
        *self.uploaded.lock().unwrap_or_else(|e| e.into_inner()) = kept;
        Ok(())
    }

    /// Makes `sets` (as [`DescriptorStore::uploaded`] listed them) the
    /// uploaded sets again.
    pub(crate) fn replace_all(&self, sets: Vec<(String, Arc<Vec<u8>>, PathBuf)>) {
        *self.uploaded.lock().unwrap_or_else(|e| e.into_inner()) = sets
            .into_iter()
            .map(|(n, bytes, replaces)| (n, Uploaded { bytes, replaces }))
            .collect();
    }

    /// Forgets parsed sets no generation uses any more.
    pub(crate) fn keep_only(&self, used: &[&str]) {
        self.parsed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|sha, _| used.contains(&sha.as_str()));
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if len > MAX_DESCRIPTOR_SET as u64 {
        return Err(format!(
            "{} is {len} bytes; a descriptor set may be at most {MAX_DESCRIPTOR_SET}",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A route's translation settings: its transcoder, made from its
/// descriptor set with its options (which may not fit the set: a service
/// it does not have, say).
pub(crate) fn translation(
    r: &wasmgate_config::RouteConfig,
    descriptors: &BTreeMap<String, LoadedSet>,
) -> Result<Option<Arc<wasmgate_proxy::translation::Translation>>, String> {
    use wasmgate_transcode::request::RequestOptions;
    use wasmgate_transcode::response::{ResponseOptions, StreamFormat};
    if r.transcode.is_none() && !r.grpc_web {
        return Ok(None);
    }
    let transcoder = match &r.transcode {
        None => None,
        Some(t) => {
            // A set that did not load was reported under its own key.
            let Some(set) = descriptors.get(&t.descriptor) else {
                return Err(format!(
                    "descriptor set {:?} did not load (see descriptors.{})",
                    t.descriptor, t.descriptor
                ));
            };
            let options = wasmgate_transcode::TranscoderOptions {
                services: (!t.services.is_empty()).then(|| t.services.clone()),
                request: RequestOptions {
                    ignore_unknown_fields: t.ignore_unknown_fields,
                    ignored_query_parameters: t.ignored_query_parameters.clone(),
                    ..RequestOptions::default()
                },
                response: ResponseOptions {
                    emit_defaults: t.emit_defaults,
                    use_proto_field_names: t.use_proto_field_names,
                    enums_as_ints: t.enums_as_ints,
                    stream: match t.stream {
                        wasmgate_config::StreamMode::Array => StreamFormat::Array,
                        wasmgate_config::StreamMode::Ndjson => StreamFormat::NewlineDelimited,
                        wasmgate_config::StreamMode::Sse => StreamFormat::ServerSentEvents,
                    },
                    ..ResponseOptions::default()
                },
            };
            Some(
                wasmgate_transcode::Transcoder::new(set.pool.clone(), options)
                    .map_err(|e| e.to_string())?,
            )
        }
    };
    Ok(Some(Arc::new(wasmgate_proxy::translation::Translation {
        transcoder,
        descriptor: r
            .transcode
            .as_ref()
            .map(|t| Arc::from(t.descriptor.as_str())),
        grpc_web: r.grpc_web,
    })))
}
