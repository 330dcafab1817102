//! The filter store: each filter name's versions (bytes, digest, where they
//! came from, request counters), its current, previous and canary version,
//! and whether the API pinned the current one.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use crate::store::{SavedFilter, SavedVersion};
use wasmgate_metrics::Metrics;
use wasmgate_proxy::canary::{Canary, VersionStats};

/// Versions kept per filter (the current, previous and canary versions are
/// never dropped).
pub const HISTORY: usize = 8;

/// Where a version's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    /// The filter's module file, read by a config (re)load.
    File,
    /// `PUT /filters/NAME/module`.
    Upload,
}

impl VersionSource {
    /// As the management API and the data directory spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionSource::File => "file",
            VersionSource::Upload => "upload",
        }
    }

    /// From the data directory's spelling (anything but `upload` is a file).
    pub fn parse(s: &str) -> VersionSource {
        match s {
            "upload" => VersionSource::Upload,
            _ => VersionSource::File,
        }
    }
}

/// One version in the filter store.
#[derive(Debug, Clone)]
pub(crate) struct StoredVersion {
    pub(crate) version: u64,
    pub(crate) sha256: String,
    pub(crate) bytes: Arc<Vec<u8>>,
    pub(crate) source: VersionSource,
    /// Milliseconds since the Unix epoch.
    pub(crate) created_ms: u64,
    pub(crate) stats: Arc<VersionStats>,
}

/// One filter name in the store.
#[derive(Debug, Clone, Default)]
pub(crate) struct FilterVersions {
    /// Oldest first.
    pub(crate) versions: VecDeque<StoredVersion>,
    /// The last number given.
    pub(crate) last: u64,
    pub(crate) current: u64,
    /// The version `current` replaced (what a rollback returns to).
    pub(crate) previous: Option<u64>,
    /// The current version was put in place through the API; the file
    /// does not decide it.
    pub(crate) pinned: bool,
    /// The module file of the config last built.
    pub(crate) path: Option<PathBuf>,
    pub(crate) canary: Option<Arc<Canary>>,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl FilterVersions {
    pub(crate) fn get(&self, version: u64) -> Option<&StoredVersion> {
        self.versions.iter().find(|s| s.version == version)
    }

    pub(crate) fn by_sha(&self, sha: &str) -> Option<&StoredVersion> {
        self.versions.iter().rev().find(|s| s.sha256 == sha)
    }

    /// Stores `bytes` as a new version and returns its number.
    pub(crate) fn add(
        &mut self,
        name: &str,
        bytes: Arc<Vec<u8>>,
        sha256: String,
        source: VersionSource,
        metrics: &Metrics,
    ) -> u64 {
        self.last += 1;
        let version = self.last;
        self.versions.push_back(StoredVersion {
            version,
            sha256,
            bytes,
            source,
            created_ms: now_ms(),
            stats: Arc::new(VersionStats::new(metrics, name, version)),
        });
        version
    }

    pub(crate) fn make_current(&mut self, version: u64) {
        if self.current != version {
            self.previous = (self.current != 0).then_some(self.current);
            self.current = version;
        }
    }

    /// Drops the oldest versions past [`HISTORY`] that are not in use;
    /// returns their numbers.
    pub(crate) fn trim(&mut self) -> Vec<u64> {
        let keep = |v: u64, st: &FilterVersions| {
            v == st.current
                || Some(v) == st.previous
                || st.canary.as_ref().is_some_and(|c| c.version() == v)
        };
        let mut dropped = Vec::new();
        while self.versions.len() > HISTORY {
            let Some(i) = self.versions.iter().position(|s| !keep(s.version, self)) else {
                break;
            };
            if let Some(s) = self.versions.remove(i) {
                dropped.push(s.version);
            }
        }
        dropped
    }

    /// What the data directory keeps of it.
    pub(crate) fn saved(&self) -> SavedFilter {
        SavedFilter {
            last: self.last,
            current: self.current,
            previous: self.previous,
            pinned: self.pinned,
            path: self.path.clone(),
            versions: self
                .versions
                .iter()
                .map(|s| SavedVersion {
                    version: s.version,
                    sha256: s.sha256.clone(),
                    source: s.source.as_str().to_owned(),
                    created_ms: s.created_ms,
                })
                .collect(),
            canary: self.canary.as_ref().map(|c| c.spec.clone()),
        }
    }
}

/// Empties the store of a filter the config no longer has, keeping only its
/// last version number, so a filter that comes back never reuses a number.
pub(crate) fn retire(st: &mut FilterVersions) {
    *st = FilterVersions {
        last: st.last,
        ..FilterVersions::default()
    };
}

/// The versions `old` holds and `new` does not, by filter name.
pub(crate) fn gone(
    old: &BTreeMap<String, FilterVersions>,
    new: &BTreeMap<String, FilterVersions>,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (name, o) in old {
        for s in &o.versions {
            if new.get(name).and_then(|n| n.get(s.version)).is_none() {
                out.push((name.clone(), s.version));
            }
        }
    }
    out
}
