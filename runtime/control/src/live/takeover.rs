//! The data directory at start and at take-over: what the first build
//! writes, and a directory another process held until it started draining.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Control, Live, one_line, restart_only_changes};
use crate::store::{DataDir, Saved, SavedFilter};
use crate::versions::{FilterVersions, StoredVersion, VersionSource, retire};
use wasmgate_config::{Config, ConfigErrors};
use wasmgate_metrics::Metrics;
use wasmgate_proxy::canary::{Canary, Tripped, VersionStats};

/// A data directory another process still holds (see
/// [`crate::gateway::Gateway::build_taking_over`]).
#[derive(Debug, Clone)]
pub struct Pending {
    /// Where it is.
    pub path: PathBuf,
    /// What it held when this gateway was built (`state.json`'s content as
    /// re-serialized), to tell whether the other process changed it since.
    pub started_from: String,
}

impl Live {
    /// Writes what the first build settled (a module file read for the
    /// first time, say), once the whole gateway has been built, so a restart
    /// finds it.
    pub(crate) async fn save_initial(&self) -> Result<(), String> {
        let control = self.control.lock().await;
        let filters = self.filters.load_full();
        self.persist(&filters, control.from_api, &self.config())
            .await
    }

    /// Takes over the data directory `dir` (now locked by this process):
    /// when the process it took over from changed it since this one was
    /// built, that state is applied (as a reload would); then this
    /// gateway's state is written and changes are taken again.
    pub(super) async fn adopt(&self, dir: DataDir, pending: &Pending) {
        let mut control = self.control.lock().await;
        if control.closed {
            return;
        }
        let saved = match dir.load() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("taking over the data directory: {e}; keeping the running state");
                Saved::default()
            }
        };
        let changed = serde_json::to_string(&saved).unwrap_or_default() != pending.started_from;
        *self.data.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(dir));
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if changed {
            tracing::warn!(
                "the data directory changed while this gateway started (a change made on the \
                 process it took over from): applying it"
            );
            if let Err(e) = self.apply_saved(&mut control, saved).await {
                tracing::error!(
                    "the other process's last changes cannot be applied here, the running \
                     state is kept (and written): {e}"
                );
            } else {
                tracing::info!("took over the data directory");
                return;
            }
        }
        let filters = self.filters.load_full();
        match self
            .persist(&filters, control.from_api, &self.config())
            .await
        {
            Ok(()) => tracing::info!("took over the data directory"),
            Err(e) => tracing::error!("took over the data directory, but: {e}"),
        }
    }

    /// Rebuilds from a state the data directory holds (config and filter
    /// store), as the first build would have.
    async fn apply_saved(&self, control: &mut Control, mut saved: Saved) -> Result<(), String> {
        let dir = self
            .data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or("no data directory")?;
        let file = Config::load(&self.file).map_err(|e| e.to_string())?;
        let file_config = file.clone();
        let config =
            crate::gateway::api_config(file, &dir, &mut saved).map_err(|e| e.to_string())?;
        let fixed = restart_only_changes(&self.config(), &config);
        if !fixed.is_empty() {
            return Err(format!(
                "[{}] differ from this process's",
                fixed.join("], [")
            ));
        }
        let mut filters = restore_all(&dir, &saved, &config, &self.deps.metrics, &self.trips)
            .map_err(|(name, m)| format!("filters.{name}: {m}"))?;
        let uploaded = self.deps.descriptors.uploaded();
        self.deps
            .descriptors
            .restore_saved(&dir, &saved)
            .map_err(|(name, m)| format!("descriptors.{name}: {m}"))?;
        let built = self.build_next(&config, &mut filters, true).await;
        let (proxy, prev) = built.map_err(|errors| {
            // The running sets stay.
            self.deps.descriptors.replace_all(uploaded);
            one_line(&ConfigErrors {
                source: config.source.clone(),
                errors,
            })
        })?;
        let from_api = saved.config.is_some();
        self.commit(
            control,
            Some((proxy, &prev)),
            filters,
            from_api,
            config,
            false,
        )
        .await?;
        self.file_config.store(std::sync::Arc::new(file_config));
        Ok(())
    }
}

/// Every filter's state as the data directory kept it: restored for the
/// filters `config` has, retired (only the last version number kept) for
/// the others. An error names its filter.
pub(super) fn restore_all(
    dir: &DataDir,
    saved: &Saved,
    config: &Config,
    metrics: &Metrics,
    trips: &mpsc::UnboundedSender<Tripped>,
) -> Result<BTreeMap<String, FilterVersions>, (String, String)> {
    let mut filters = BTreeMap::new();
    for (name, f) in &saved.filters {
        let mut state = if config.filter_by_key(name).is_some() {
            restore(dir, name, f, metrics, trips).map_err(|m| (name.clone(), m))?
        } else {
            FilterVersions::default()
        };
        state.last = state.last.max(f.last);
        if config.filter_by_key(name).is_none() {
            retire(&mut state);
        }
        filters.insert(name.clone(), state);
    }
    Ok(filters)
}

/// A filter's state as the data directory kept it, with its modules read
/// back (and their digests checked).
pub(super) fn restore(
    dir: &DataDir,
    name: &str,
    f: &SavedFilter,
    metrics: &Metrics,
    trips: &mpsc::UnboundedSender<Tripped>,
) -> Result<FilterVersions, String> {
    let mut versions = VecDeque::new();
    for v in &f.versions {
        let bytes = dir.module(&v.sha256)?;
        versions.push_back(StoredVersion {
            version: v.version,
            sha256: v.sha256.clone(),
            bytes: Arc::new(bytes),
            source: VersionSource::parse(&v.source),
            created_ms: v.created_ms,
            stats: Arc::new(VersionStats::new(metrics, name, v.version)),
        });
    }
    let state = FilterVersions {
        versions,
        last: f.last,
        current: f.current,
        previous: f.previous,
        pinned: f.pinned,
        path: f.path.clone(),
        canary: match &f.canary {
            Some(spec) => Some(Arc::new(Canary::new(name, spec.clone(), trips.clone())?)),
            None => None,
        },
    };
    if state.current != 0 && state.get(state.current).is_none() {
        return Err(format!(
            "the data directory names version {} as current but does not hold it",
            state.current
        ));
    }
    Ok(state)
}
