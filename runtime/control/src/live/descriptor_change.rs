//! A descriptor set put through the admin API (`PUT /descriptors/NAME`):
//! parsed, then every route that transcodes with it rebuilt on it beside
//! the running generation, and swapped in only if all of them build; a
//! refused set leaves the running one serving.

use super::{CLOSED, Live, PENDING};
use crate::descriptors::MAX_DESCRIPTOR_SET;
use wasmgate_config::ConfigErrors;

/// Why a descriptor set was refused.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    /// No `[descriptors.NAME]` in the config.
    #[error("no descriptor set named {0:?} in the config (add [descriptors.NAME] with a path)")]
    Unknown(String),
    /// Larger than [`MAX_DESCRIPTOR_SET`].
    #[error("the descriptor set is larger than the {MAX_DESCRIPTOR_SET} bytes accepted")]
    TooLarge,
    /// Not a descriptor set, or one whose HTTP rules do not hold together.
    #[error("not a usable descriptor set: {0}")]
    Invalid(String),
    /// A route that uses it cannot be built on it (a service it names is
    /// not in it, say).
    #[error("{0}")]
    Routes(ConfigErrors),
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

impl Live {
    /// Puts `bytes` in place of the operator's descriptor set `name`, and
    /// rebuilds the routes on it. Returns the set as `GET /descriptors/NAME`
    /// shows it.
    pub async fn put_descriptor(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<serde_json::Value, DescriptorError> {
        let mut control = self.control.lock().await;
        if control.closed {
            return Err(DescriptorError::Closed);
        }
        if self.is_pending() {
            return Err(DescriptorError::Pending);
        }
        if bytes.len() > MAX_DESCRIPTOR_SET {
            return Err(DescriptorError::TooLarge);
        }
        let config = self.config();
        let Some(entry) = config.descriptors.get(name) else {
            return Err(DescriptorError::Unknown(name.to_owned()));
        };
        let store = &self.deps.descriptors;
        store.parse(&bytes).map_err(DescriptorError::Invalid)?;
        let before = store.put(name, bytes, &entry.path);
        let mut filters = (*self.filters.load_full()).clone();
        let built = self.build_next(&config, &mut filters, false).await;
        let (next, prev) = match built {
            Ok(built) => built,
            Err(errors) => {
                store.restore(name, before, &entry.path);
                let e = ConfigErrors {
                    source: format!("descriptor set {name:?}"),
                    errors,
                };
                tracing::error!(
                    descriptor = name,
                    "descriptor set rejected, the running one stays: {}",
                    super::one_line(&e)
                );
                return Err(DescriptorError::Routes(e));
            }
        };
        let from_api = control.from_api;
        let report = next.descriptors.get(name).map(|s| s.describe(name));
        if let Err(e) = self
            .commit(
                &mut control,
                Some((next, &prev)),
                filters,
                from_api,
                (*config).clone(),
                false,
            )
            .await
        {
            store.restore(name, before, &entry.path);
            return Err(DescriptorError::Persist(e));
        }
        let report = report.unwrap_or(serde_json::Value::Null);
        tracing::info!(
            descriptor = name,
            sha256 = %report["sha256"],
            "descriptor set replaced through the admin API"
        );
        Ok(report)
    }

    /// `GET /descriptors`: the operator's sets as the running generation
    /// uses them.
    pub fn descriptors_report(&self) -> serde_json::Value {
        let g = self.generation();
        serde_json::Value::Array(
            g.descriptors
                .iter()
                .map(|(name, set)| set.describe(name))
                .collect(),
        )
    }

    /// `GET /descriptors/NAME`, or `Null` when there is no such set.
    pub fn descriptor_report(&self, name: &str) -> serde_json::Value {
        self.generation()
            .descriptors
            .get(name)
            .map_or(serde_json::Value::Null, |s| s.describe(name))
    }
}
