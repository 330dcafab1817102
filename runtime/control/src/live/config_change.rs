//! Config reloads: SIGHUP, a watched file, `POST /config/reload`, `PUT /config`.

use super::{CLOSED, Control, Live, PENDING, one_line};
use crate::versions::retire;
use wasmgate_config::tenant::Refused;
use wasmgate_config::{Config, ConfigError, ConfigErrors};

/// Where a config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The config file (SIGHUP, a watched file, `POST /config/reload`).
    File,
    /// A document put through the management API.
    Api,
}

/// The sections of `new` that differ from `old` and apply to the listener or
/// the engine, so cannot change while the gateway runs.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut fixed = Vec::new();
    if old.server != new.server {
        fixed.push("server");
    }
    if old.engine != new.engine {
        fixed.push("engine");
    }
    if old.admin != new.admin {
        fixed.push("admin");
    }
    if old.overload != new.overload {
        fixed.push("overload");
    }
    if old.watch != new.watch {
        fixed.push("watch");
    }
    if old.limits.listener() != new.limits.listener() {
        fixed.push("limits");
    }
    fixed
}

impl Live {
    /// Replaces the config with one put through the API: everything is
    /// built and validated first; on any error the running generation stays
    /// and every error is returned.
    pub async fn apply_config(&self, config: Config) -> Result<Refused, ConfigErrors> {
        self.apply_parsed(Ok((config, Vec::new())), Origin::Api)
            .await
    }

    /// Reads the config file at `path` (and the tenants' folder) and applies
    /// it. A tenant whose file is bad, or whose filters do not load, keeps
    /// running as it did; the others change.
    pub async fn reload_from(&self, path: &std::path::Path) -> Result<Refused, ConfigErrors> {
        let parsed = Config::load_beside(path, &self.config());
        self.apply_parsed(parsed, Origin::File).await
    }

    /// Applies a config that parsed (with the tenants refused as it was
    /// read); counts and logs the outcome either way. Returns every tenant
    /// refused, each with its errors.
    pub async fn apply_parsed(
        &self,
        parsed: Result<(Config, Refused), ConfigErrors>,
        origin: Origin,
    ) -> Result<Refused, ConfigErrors> {
        let mut control = self.control.lock().await;
        let result = match parsed {
            Ok((config, mut refused)) => {
                self.apply_locked(&mut control, config, origin)
                    .await
                    .map(|more| {
                        refused.extend(more);
                        refused
                    })
            }
            Err(e) => Err(e),
        };
        if let Ok(refused) = &result {
            for (tenant, e) in refused {
                self.deps
                    .metrics
                    .tenant_refusals
                    .get_or_create(&wasmgate_metrics::TenantLabels {
                        tenant: tenant.clone(),
                    })
                    .inc();
                tracing::error!(
                    tenant,
                    "tenant config refused, its running config stays: {}",
                    one_line(e)
                );
            }
        }
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        self.deps
            .metrics
            .config_reloads
            .get_or_create(&wasmgate_metrics::OutcomeLabels { outcome })
            .inc();
        match &result {
            Ok(_) => tracing::info!(source = %self.config().source, "config reloaded"),
            Err(e) => tracing::error!(
                "config reload rejected, the running config stays: {}",
                one_line(e)
            ),
        }
        result
    }

    async fn apply_locked(
        &self,
        control: &mut Control,
        mut config: Config,
        origin: Origin,
    ) -> Result<Refused, ConfigErrors> {
        let source = config.source.clone();
        let fail = |errors| ConfigErrors {
            source: source.clone(),
            errors,
        };
        if control.closed {
            return Err(fail(vec![ConfigError::new("", CLOSED)]));
        }
        if self.is_pending() {
            return Err(fail(vec![ConfigError::new("admin.data_dir", PENDING)]));
        }
        let fixed = restart_only_changes(&self.config(), &config);
        if !fixed.is_empty() {
            return Err(fail(
                fixed
                    .into_iter()
                    .map(|k| {
                        ConfigError::new(
                            k,
                            "this section changed; it is read at start (listener, engine, file watching), \
                             so changing it needs a restart",
                        )
                    })
                    .collect(),
            ));
        }
        let mut filters = (*self.filters.load_full()).clone();
        for (name, st) in &mut filters {
            if config.filter_by_key(name).is_none() {
                retire(st);
            }
        }
        let (proxy, prev, refused) = self
            .build_next_apart(&mut config, &mut filters)
            .await
            .map_err(fail)?;
        let from_api = origin == Origin::Api;
        let from_file = (!from_api).then(|| config.clone());
        let running = self.config();
        let config_tenants: std::collections::BTreeSet<String> =
            config.tenants.keys().cloned().collect();
        let removed: Vec<wasmgate_config::Scoped> = running
            .scopes()
            .flat_map(|s| {
                s.filters
                    .keys()
                    .map(move |n| wasmgate_config::Scoped::new(s.tenant.clone(), n.as_str()))
            })
            .filter(|n| config.filter_by_key(&n.key()).is_none())
            .collect();
        self.commit(
            control,
            Some((proxy, &prev)),
            filters,
            from_api,
            config,
            false,
        )
        .await
        .map_err(|m| fail(vec![ConfigError::new("admin.data_dir", m)]))?;
        if let Some(file) = from_file {
            self.file_config.store(std::sync::Arc::new(file));
        }
        // Its host-held rate-limit state leaves with a removed filter.
        for name in removed {
            self.deps.engine.services().forget_buckets(&name);
        }
        // A tenant that left takes its host-held state with it (its
        // requests in flight finish on the generation they started on).
        for gone in running
            .tenants
            .keys()
            .filter(|t| !config_tenants.contains(*t))
        {
            let id = wasmgate_config::TenantId(std::sync::Arc::from(gone.as_str()));
            self.deps.engine.services().forget_tenant(&id);
            tracing::info!(
                tenant = gone.as_str(),
                "tenant removed; its state is cleared"
            );
        }
        Ok(refused)
    }
}
