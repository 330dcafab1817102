//! What the management API shows of the filters, and the gauges sampled
//! at scrape time.

use super::Live;

impl Live {
    /// One filter: its current version, canary, the versions kept (with
    /// their request counters), and how many versions and instances of it
    /// are alive (old versions live until the requests that use them end).
    pub fn filter_report(&self, name: &str) -> serde_json::Value {
        let generation = self.generation();
        let Some(l) = generation.modules.get(name) else {
            return serde_json::Value::Null;
        };
        let counts = self
            .deps
            .engine
            .live_counts()
            .into_iter()
            .find(|(n, _)| *n == wasmgate_config::Scoped::from_key(name))
            .map(|(_, c)| c);
        let get = |f: fn(&wasmgate_engine::LiveCounts) -> i64| counts.as_deref().map_or(0, f);
        let store = self.filters.load();
        let state = store.get(name);
        let versions: Vec<serde_json::Value> = state
            .map(|st| {
                st.versions
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "version": s.version,
                            "sha256": s.sha256,
                            "source": s.source.as_str(),
                            "created_ms": s.created_ms,
                            "size": s.bytes.len(),
                            "requests": s.stats.report(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let e = &l.current;
        serde_json::json!({
            "name": name,
            "version": e.version,
            "sha256": e.module.sha256(),
            "contract": e.module.contract(),
            "source": e.source.as_str(),
            "pinned": state.is_some_and(|s| s.pinned),
            "previous": state.and_then(|s| s.previous),
            "canary": l.canary.as_ref().map(|(_, c)| c.report()),
            "versions": versions,
            "live_versions": get(|c| c.versions.load(std::sync::atomic::Ordering::Relaxed)),
            "live_instances": get(|c| c.instances.load(std::sync::atomic::Ordering::Relaxed)),
        })
    }

    /// Every filter, as [`Live::filter_report`] describes one.
    pub fn filters_report(&self) -> serde_json::Value {
        let names: Vec<String> = self.generation().modules.keys().cloned().collect();
        let filters: Vec<_> = names.iter().map(|n| self.filter_report(n)).collect();
        serde_json::json!({ "filters": filters })
    }

    /// Brings the response cache's counters and gauges up to date.
    fn sample_cache(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.deps.metrics;
        let cache = &self.deps.response_cache;
        // Maintenance first: evictions are counted as it runs.
        let (entries, bytes) = cache.usage();
        let st = cache.stats();
        for (result, n) in [
            ("hit", &st.hits),
            ("stale", &st.stale),
            ("miss", &st.misses),
            ("bypass", &st.bypasses),
        ] {
            wasmgate_metrics::raise(
                &m.cache_lookups
                    .get_or_create(&wasmgate_metrics::CacheResultLabels { result }),
                n.load(Relaxed),
            );
        }
        for (outcome, n) in [("ok", &st.stores), ("rejected", &st.not_stored)] {
            wasmgate_metrics::raise(
                &m.cache_stores
                    .get_or_create(&wasmgate_metrics::OutcomeLabels { outcome }),
                n.load(Relaxed),
            );
        }
        for (result, n) in [("hit", &st.filter_hits), ("miss", &st.filter_misses)] {
            wasmgate_metrics::raise(
                &m.cache_filter_lookups
                    .get_or_create(&wasmgate_metrics::CacheResultLabels { result }),
                n.load(Relaxed),
            );
        }
        for (outcome, n) in [("ok", &st.filter_stores), ("rejected", &st.filter_refused)] {
            wasmgate_metrics::raise(
                &m.cache_filter_stores
                    .get_or_create(&wasmgate_metrics::OutcomeLabels { outcome }),
                n.load(Relaxed),
            );
        }
        wasmgate_metrics::raise(&m.cache_evictions, st.evictions.load(Relaxed));
        wasmgate_metrics::raise(&m.cache_revalidated, st.revalidated.load(Relaxed));
        wasmgate_metrics::raise(&m.cache_coalesced_waits, st.coalesced.load(Relaxed));
        wasmgate_metrics::raise(&m.cache_purged, st.purged.load(Relaxed));
        for (tenant, bytes, evictions) in cache.tenant_usage() {
            let labels = wasmgate_metrics::TenantLabels {
                tenant: tenant.to_string(),
            };
            m.tenant_cache_bytes
                .get_or_create(&labels)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            wasmgate_metrics::raise(&m.tenant_cache_evictions.get_or_create(&labels), evictions);
        }
        m.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        m.cache_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Brings the tenants' quota counters and gauges up to date.
    fn sample_quotas(&self) {
        let m = &self.deps.metrics;
        let grow = wasmgate_metrics::raise;
        for q in self.deps.engine.services().quotas() {
            let tenant = q.tenant().as_str().to_owned();
            let labels = wasmgate_metrics::TenantLabels {
                tenant: tenant.clone(),
            };
            for (quota, total) in q.refusals() {
                if total > 0 {
                    grow(
                        &m.tenant_quota_refusals.get_or_create(
                            &wasmgate_metrics::TenantQuotaLabels {
                                tenant: tenant.clone(),
                                quota,
                            },
                        ),
                        total,
                    );
                }
            }
            wasmgate_metrics::raise_seconds(
                &m.tenant_filter_cpu.get_or_create(&labels),
                q.cpu_used().as_secs_f64(),
            );
            grow(
                &m.tenant_filter_slot_waits.get_or_create(&labels),
                q.slot_waits(),
            );
            m.tenant_requests_in_flight
                .get_or_create(&labels)
                .set(i64::from(q.requests_in_flight()));
            m.tenant_filter_instances
                .get_or_create(&labels)
                .set(i64::from(q.instances()));
            m.tenant_filter_memory
                .get_or_create(&labels)
                .set(i64::try_from(q.memory()).unwrap_or(i64::MAX));
        }
    }

    /// Brings the live-version and live-instance gauges up to date.
    pub(crate) fn sample_metrics(&self) {
        let m = &self.deps.metrics;
        let refused = self.deps.engine.compile_cache_refusals();
        let counted = m.compile_cache_refused.get();
        if refused > counted {
            m.compile_cache_refused.inc_by(refused - counted);
        }
        let config = self.config();
        self.sample_quotas();
        for (source, total) in self.deps.engine.module_loads() {
            wasmgate_metrics::raise(
                &m.filter_module_loads
                    .get_or_create(&wasmgate_metrics::LoadSourceLabels { source }),
                total,
            );
        }
        m.filter_components
            .set(i64::try_from(self.deps.engine.components_in_memory()).unwrap_or(i64::MAX));
        self.sample_cache();
        for (name, c) in self.deps.engine.live_counts() {
            let labels = wasmgate_metrics::FilterNameLabels {
                filter: name.to_string(),
            };
            let m = &self.deps.metrics;
            // A tenant that left: its filters' series go once nothing of
            // them is alive (their last requests have ended).
            if !name.tenant.is_default()
                && !config.tenants.contains_key(name.tenant.as_str())
                && self.deps.engine.forget_live(&name)
            {
                m.filter_versions_live.remove(&labels);
                m.filter_instances_live.remove(&labels);
                continue;
            }
            m.filter_versions_live
                .get_or_create(&labels)
                .set(c.versions.load(std::sync::atomic::Ordering::Relaxed));
            m.filter_instances_live
                .get_or_create(&labels)
                .set(c.instances.load(std::sync::atomic::Ordering::Relaxed));
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            let log = [("log_lines_per_second", c.log.dropped.load(relaxed))];
            for (limit, total) in log.into_iter().chain(c.refused.all()) {
                if total == 0 {
                    continue;
                }
                let counter =
                    m.filter_refusals
                        .get_or_create(&wasmgate_metrics::FilterRefusalLabels {
                            tenant: name.tenant.as_str().to_owned(),
                            filter: name.name.to_string(),
                            limit,
                        });
                if total > counter.get() {
                    counter.inc_by(total - counter.get());
                }
            }
        }
    }
}
