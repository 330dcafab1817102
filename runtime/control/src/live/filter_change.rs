//! Changes to the filter store: uploads, activation, canaries, promotion and
//! rollback (by hand, or automatic when a canary trips).

use std::sync::Arc;

use super::{CLOSED, Control, Live, PENDING, one_line};
use crate::versions::VersionSource;
use wasmgate_config::ConfigErrors;
use wasmgate_engine::sha256_hex;
use wasmgate_proxy::canary::{Canary, CanarySpec, Tripped};

/// Largest module accepted by upload.
pub const MAX_MODULE_SIZE: usize = 64 << 20;

/// Why a change to the filter store was refused.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No `[filters.NAME]` in the config.
    #[error("no filter named {0:?} in the config")]
    UnknownFilter(String),
    /// The store has no such version of the filter.
    #[error("filter {filter:?} has no version {version} (GET /filters lists the versions kept)")]
    UnknownVersion {
        /// Filter name.
        filter: String,
        /// The version asked for.
        version: u64,
    },
    /// Promote or roll back a canary that is not there, or roll back with
    /// nothing to return to.
    #[error("{0}")]
    Conflict(String),
    /// A canary spec that does not hold together.
    #[error("invalid canary: {0}")]
    BadCanary(String),
    /// Larger than [`MAX_MODULE_SIZE`].
    #[error("the module is {0} bytes; at most {MAX_MODULE_SIZE} are accepted")]
    TooLarge(usize),
    /// The body's SHA-256 is not the one the caller expected.
    #[error("the module's sha256 is {actual}, not the expected {expected}")]
    Digest {
        /// Given by the caller.
        expected: String,
        /// Of the bytes received.
        actual: String,
    },
    /// It does not load, link or initialise.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// The data directory could not be written; nothing changed.
    #[error("{0}")]
    Persist(String),
    /// The gateway is shutting down.
    #[error("{CLOSED}")]
    Closed,
    /// The data directory is not this gateway's yet.
    #[error("{PENDING}")]
    Pending,
}

/// A filter-store change: what to do to one filter's state.
pub(super) enum Change {
    Upload {
        bytes: Vec<u8>,
        sha256: String,
        activate: bool,
    },
    Activate(u64),
    Canary(CanarySpec),
    Promote,
    Rollback,
    AutoRollback(Tripped),
}

/// What a change did to a canary, counted in
/// `wasmgate_filter_canary_events_total{event}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CanaryEvent {
    Started,
    Promoted,
    RolledBack,
    AutoRolledBack,
}

impl CanaryEvent {
    fn as_str(self) -> &'static str {
        match self {
            CanaryEvent::Started => "started",
            CanaryEvent::Promoted => "promoted",
            CanaryEvent::RolledBack => "rolled_back",
            CanaryEvent::AutoRolledBack => "auto_rolled_back",
        }
    }
}

/// Which change this is (its payload aside): for logs, metrics and the
/// decisions that depend only on the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Upload,
    Activate,
    Canary,
    Promote,
    Rollback,
    AutoRollback,
}

impl ChangeKind {
    /// As logs say it.
    fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Upload => "upload",
            ChangeKind::Activate => "activate",
            ChangeKind::Canary => "canary",
            ChangeKind::Promote => "promote",
            ChangeKind::Rollback => "rollback",
            ChangeKind::AutoRollback => "automatic rollback",
        }
    }
}

impl Change {
    fn kind(&self) -> ChangeKind {
        match self {
            Change::Upload { .. } => ChangeKind::Upload,
            Change::Activate(_) => ChangeKind::Activate,
            Change::Canary(_) => ChangeKind::Canary,
            Change::Promote => ChangeKind::Promote,
            Change::Rollback => ChangeKind::Rollback,
            Change::AutoRollback(_) => ChangeKind::AutoRollback,
        }
    }
}

impl Live {
    /// Validates `bytes` as a new version of filter `name` (compiled off the
    /// request path, linked, and `init` run with every route's config that
    /// uses it). With `activate`, it becomes the current version; without,
    /// it is only stored (for a canary, say). Returns the filter's report.
    pub async fn upload_module(
        &self,
        name: &str,
        bytes: Vec<u8>,
        expected_sha256: Option<&str>,
        activate: bool,
    ) -> Result<serde_json::Value, SwapError> {
        if bytes.len() > MAX_MODULE_SIZE {
            return self.finish(
                name,
                ChangeKind::Upload,
                Err(SwapError::TooLarge(bytes.len())),
            );
        }
        let sha256 = sha256_hex(&bytes);
        if let Some(expected) = expected_sha256
            && !sha256.eq_ignore_ascii_case(expected.trim())
        {
            let e = SwapError::Digest {
                expected: expected.to_owned(),
                actual: sha256,
            };
            return self.finish(name, ChangeKind::Upload, Err(e));
        }
        let change = Change::Upload {
            bytes,
            sha256,
            activate,
        };
        self.change(name, change).await
    }

    /// Makes stored version `version` of `name` the current one (pinned).
    pub async fn activate_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<serde_json::Value, SwapError> {
        self.change(name, Change::Activate(version)).await
    }

    /// Starts (or replaces) a canary of a stored version of `name`.
    pub async fn start_canary(
        &self,
        name: &str,
        spec: CanarySpec,
    ) -> Result<serde_json::Value, SwapError> {
        self.change(name, Change::Canary(spec)).await
    }

    /// Makes the canary version of `name` its current version.
    pub async fn promote(&self, name: &str) -> Result<serde_json::Value, SwapError> {
        self.change(name, Change::Promote).await
    }

    /// Ends the canary of `name`; with none running, returns `name` to the
    /// version before the current one.
    pub async fn rollback(&self, name: &str) -> Result<serde_json::Value, SwapError> {
        self.change(name, Change::Rollback).await
    }

    /// Applies one filter-store change; counts and logs the outcome.
    pub(super) async fn change(
        &self,
        name: &str,
        change: Change,
    ) -> Result<serde_json::Value, SwapError> {
        let kind = change.kind();
        let mut control = self.control.lock().await;
        let result = self.change_locked(&mut control, name, change).await;
        // The report is of this change, not of one made after it.
        let result = result.map(|changed| {
            let mut report = self.filter_report(name);
            if !changed {
                report["unchanged"] = true.into();
            }
            report
        });
        drop(control);
        self.finish(name, kind, result)
    }

    fn finish(
        &self,
        name: &str,
        kind: ChangeKind,
        result: Result<serde_json::Value, SwapError>,
    ) -> Result<serde_json::Value, SwapError> {
        let known = self.config().filter_by_key(name).is_some();
        let what = kind.as_str();
        if kind == ChangeKind::Upload && known {
            let outcome = if result.is_ok() { "ok" } else { "rejected" };
            self.deps
                .metrics
                .filter_swaps
                .get_or_create(&wasmgate_metrics::SwapLabels {
                    filter: name.to_owned(),
                    outcome,
                })
                .inc();
        }
        match &result {
            Ok(report) if report["unchanged"] == true => tracing::info!(
                filter = name,
                "filter {what}: nothing to do (the canary had already ended)"
            ),
            Ok(report) => tracing::info!(
                filter = name,
                version = %report["version"],
                canary = %report["canary"]["version"],
                "filter {what}: done"
            ),
            Err(SwapError::Invalid(e)) => tracing::error!(
                filter = name,
                "filter {what} rejected, the current version stays: {}",
                one_line(e)
            ),
            Err(e) => tracing::error!(
                filter = name,
                "filter {what} rejected, the current version stays: {e}"
            ),
        }
        result
    }

    async fn change_locked(
        &self,
        control: &mut Control,
        name: &str,
        change: Change,
    ) -> Result<bool, SwapError> {
        if control.closed {
            return Err(SwapError::Closed);
        }
        if self.is_pending() {
            return Err(SwapError::Pending);
        }
        let config = self.config();
        if config.filter_by_key(name).is_none() {
            return Err(SwapError::UnknownFilter(name.to_owned()));
        }
        let mut filters = (*self.filters.load_full()).clone();
        let st = filters.entry(name.to_owned()).or_default();
        let unknown = |version| SwapError::UnknownVersion {
            filter: name.to_owned(),
            version,
        };
        let kind = change.kind();
        // Set when the change starts or ends a canary: the event to count.
        let mut event = None;
        // An upload that is only stored is validated as if it were current,
        // and the state without it made current is what is kept.
        let mut store_only = None;
        match change {
            Change::Upload {
                bytes,
                sha256: sha,
                activate,
            } => {
                let version = match st.by_sha(&sha) {
                    Some(s) if s.version == st.current || !activate => s.version,
                    _ => st.add(
                        name,
                        Arc::new(bytes),
                        sha,
                        VersionSource::Upload,
                        &self.deps.metrics,
                    ),
                };
                if !activate {
                    store_only = Some((st.clone(), version));
                }
                // Validated as the current version either way.
                st.make_current(version);
                st.pinned = true;
            }
            Change::Activate(version) => {
                st.get(version).ok_or_else(|| unknown(version))?;
                if st.canary.as_ref().is_some_and(|c| c.version() == version) {
                    st.canary = None;
                    event = Some(CanaryEvent::Promoted);
                }
                st.make_current(version);
                st.pinned = true;
            }
            Change::Canary(spec) => {
                let version = spec.version;
                st.get(version).ok_or_else(|| unknown(version))?;
                if version == st.current {
                    return Err(SwapError::BadCanary(format!(
                        "version {version} is the current version of {name:?}"
                    )));
                }
                let canary =
                    Canary::new(name, spec, self.trips.clone()).map_err(SwapError::BadCanary)?;
                st.canary = Some(Arc::new(canary));
                event = Some(CanaryEvent::Started);
            }
            Change::Promote => {
                let Some(c) = st.canary.take() else {
                    return Err(SwapError::Conflict(format!(
                        "filter {name:?} has no canary to promote"
                    )));
                };
                st.make_current(c.version());
                st.pinned = true;
                event = Some(CanaryEvent::Promoted);
            }
            Change::Rollback => {
                if st.canary.take().is_some() {
                    event = Some(CanaryEvent::RolledBack);
                } else {
                    let Some(previous) = st.previous.filter(|v| st.get(*v).is_some()) else {
                        return Err(SwapError::Conflict(format!(
                            "filter {name:?} has no canary and no previous version to roll back to"
                        )));
                    };
                    st.make_current(previous);
                    st.pinned = true;
                }
            }
            Change::AutoRollback(t) => {
                if st.canary.as_ref().is_none_or(|c| c.id() != t.id) {
                    // Ended or replaced meanwhile.
                    return Ok(false);
                }
                st.canary = None;
                event = Some(CanaryEvent::AutoRolledBack);
            }
        }
        // Taking a failing canary out of service matters more than
        // remembering that it was: applied even if the data directory
        // cannot be written.
        let force = kind == ChangeKind::AutoRollback;
        // A version change reads no module file: another filter's file being
        // rewritten must neither block it nor ride along with it.
        let (proxy, prev) = self
            .build_next(&config, &mut filters, false)
            .await
            .map_err(|errors| {
                SwapError::Invalid(ConfigErrors {
                    source: format!("filter {name:?}"),
                    errors,
                })
            })?;
        let from_api = control.from_api;
        if let Some((kept, version)) = store_only {
            // Valid: keep the version, leave the running generation alone.
            drop(proxy);
            let mut filters = (*self.filters.load_full()).clone();
            filters.insert(name.to_owned(), kept);
            self.commit(control, None, filters, from_api, (*config).clone(), false)
                .await
                .map_err(SwapError::Persist)?;
            tracing::info!(
                filter = name,
                version,
                "filter version stored, not activated"
            );
            return Ok(true);
        }
        self.commit(
            control,
            Some((proxy, &prev)),
            filters,
            from_api,
            (*config).clone(),
            force,
        )
        .await
        .map_err(SwapError::Persist)?;
        if let Some(event) = event {
            self.deps
                .metrics
                .filter_canary_events
                .get_or_create(&wasmgate_metrics::CanaryLabels {
                    filter: name.to_owned(),
                    event: event.as_str(),
                })
                .inc();
        }
        Ok(true)
    }
}
