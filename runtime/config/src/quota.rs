//! Tenant quotas: `[tenants.quotas]` (what every tenant gets unless the
//! operator says otherwise) and `[tenants.quota_overrides.NAME]` (one
//! tenant's exceptions, only the keys it changes), as written
//! (`RawQuota`), validated and typed ([`QuotaSettings`], [`Quotas`]).
//!
//! Quotas are the operator's: they live in the main config, never in a
//! tenant's own file, which a tenant may write through its scoped admin
//! token. The operator's own routes (the main config's) have none.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::{ConfigError, HumanDuration, HumanSize};

/// One set of quota keys as written; every key optional.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuota {
    concurrent_requests: Option<u32>,
    requests_per_second: Option<u32>,
    request_burst: Option<u32>,
    filter_cpu_per_request: Option<HumanDuration>,
    filter_cpu_per_second: Option<HumanDuration>,
    filter_memory: Option<HumanSize>,
    filter_instances: Option<u32>,
    filter_concurrency: Option<u32>,
    kv_bytes: Option<HumanSize>,
    rate_limit_keys: Option<u32>,
    outbound_per_second: Option<u32>,
    metric_series: Option<u32>,
    cache_bytes: Option<HumanSize>,
}

/// What one tenant may use. `None`: no quota of that kind (the gateway-wide
/// limits still hold: `engine.max_instances`, each filter's own budgets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaSettings {
    /// Requests of the tenant in flight at once (503 past it).
    pub concurrent_requests: Option<u32>,
    /// Requests per second, a token bucket (429 past it).
    pub requests_per_second: Option<u32>,
    /// The bucket's size; `requests_per_second` when not set.
    pub request_burst: Option<u32>,
    /// Guest CPU time all the tenant's filters may use on one request
    /// together (the call past it fails like one past its own budget).
    pub filter_cpu_per_request: Option<Duration>,
    /// Guest CPU time the tenant's filters may use per second of wall
    /// time, a token bucket one second deep (503 past it).
    pub filter_cpu_per_second: Option<Duration>,
    /// Linear memory of all the tenant's filter instances together (a
    /// guest's growth past it fails like its own memory cap).
    pub filter_memory: Option<u64>,
    /// Filter instances the tenant may hold at once: its share of
    /// `engine.max_instances` (503 past it).
    pub filter_instances: Option<u32>,
    /// Filter calls of the tenant running guest code at once; more wait
    /// (within their wall-clock budget) for one to end or wait on I/O.
    /// `None` here means the built-in default, half the workers.
    pub filter_concurrency: Option<u32>,
    /// Bytes the tenant's filters may keep in `kv`, together.
    pub kv_bytes: Option<u64>,
    /// `rate-limit` keys the tenant's filters may hold, together.
    pub rate_limit_keys: Option<u32>,
    /// Outbound calls per second the tenant's filters may make, together.
    pub outbound_per_second: Option<u32>,
    /// Metric series its config may make the gateway export (routes,
    /// filters on them, clusters, endpoints): a tenant's config past it
    /// is refused.
    pub metric_series: Option<u32>,
    /// Bytes the tenant's answers may take in the response cache (past
    /// it, its own oldest entries make room); `None`: only the whole
    /// cache's `max_bytes`.
    pub cache_bytes: Option<u64>,
}

/// Every quota's key, as `[tenants.quotas]` writes it and metrics label it.
pub const QUOTA_KEYS: [&str; 9] = [
    "concurrent_requests",
    "requests_per_second",
    "filter_cpu_per_request",
    "filter_cpu_per_second",
    "filter_memory",
    "filter_instances",
    "kv_bytes",
    "rate_limit_keys",
    "outbound_per_second",
];

/// Built-in default of `metric_series`: some 250 routes with a filter each.
pub const DEFAULT_METRIC_SERIES: u32 = 20_000;

/// Built-in default of `kv_bytes`.
pub const DEFAULT_KV_BYTES: u64 = 64 << 20;
/// Built-in default of `rate_limit_keys`.
pub const DEFAULT_RATE_LIMIT_KEYS: u32 = 100_000;

impl QuotaSettings {
    /// The built-in defaults: a tenant's filter state is bounded, its
    /// filters share the CPU, everything else is the operator's to set.
    pub fn builtin() -> QuotaSettings {
        QuotaSettings {
            kv_bytes: Some(DEFAULT_KV_BYTES),
            rate_limit_keys: Some(DEFAULT_RATE_LIMIT_KEYS),
            metric_series: Some(DEFAULT_METRIC_SERIES),
            ..QuotaSettings::default()
        }
    }

    /// Calls of one tenant that may run guest code at once with `workers`
    /// worker threads: the setting, else half the workers (at least one), so
    /// one tenant's slow filters always leave workers to the others.
    pub fn filter_concurrency_with(&self, workers: usize) -> u32 {
        self.filter_concurrency
            .unwrap_or_else(|| u32::try_from((workers / 2).max(1)).unwrap_or(u32::MAX))
    }

    /// The token bucket's size for requests.
    pub fn request_burst(&self) -> Option<u32> {
        self.request_burst.or(self.requests_per_second)
    }

    /// `raw`'s keys over `self`, checked; problems are pushed with `key`'s
    /// path.
    fn overlaid(
        mut self,
        raw: RawQuota,
        key: &str,
        errors: &mut Vec<ConfigError>,
    ) -> QuotaSettings {
        let mut positive = |name: &str, v: Option<u64>| -> bool {
            if v == Some(0) {
                errors.push(ConfigError::new(
                    format!("{key}.{name}"),
                    "must be more than 0 (leave the key out for no quota of this kind)",
                ));
                false
            } else {
                true
            }
        };
        macro_rules! take {
            ($field:ident, $v:expr) => {{
                let v = $v;
                if v.is_some()
                    && positive(
                        stringify!($field),
                        v.map(|x| u64::try_from(x).unwrap_or(u64::MAX)),
                    )
                {
                    self.$field = v;
                }
            }};
        }
        take!(concurrent_requests, raw.concurrent_requests);
        take!(requests_per_second, raw.requests_per_second);
        take!(request_burst, raw.request_burst);
        take!(filter_instances, raw.filter_instances);
        take!(filter_concurrency, raw.filter_concurrency);
        take!(rate_limit_keys, raw.rate_limit_keys);
        take!(outbound_per_second, raw.outbound_per_second);
        take!(metric_series, raw.metric_series);
        take!(filter_memory, raw.filter_memory.map(|s| s.0));
        take!(kv_bytes, raw.kv_bytes.map(|s| s.0));
        take!(cache_bytes, raw.cache_bytes.map(|s| s.0));
        for (name, d, field) in [
            (
                "filter_cpu_per_request",
                raw.filter_cpu_per_request,
                &mut self.filter_cpu_per_request,
            ),
            (
                "filter_cpu_per_second",
                raw.filter_cpu_per_second,
                &mut self.filter_cpu_per_second,
            ),
        ] {
            match d {
                Some(HumanDuration(d)) if d.is_zero() => errors.push(ConfigError::new(
                    format!("{key}.{name}"),
                    "must be more than 0 (leave the key out for no quota of this kind)",
                )),
                Some(HumanDuration(d)) => *field = Some(d),
                None => {}
            }
        }
        if let Some(cpu) = self.filter_cpu_per_second
            && cpu > Duration::from_secs(3600)
        {
            errors.push(ConfigError::new(
                format!("{key}.filter_cpu_per_second"),
                format!("{cpu:?} is more CPU than a second can hold on any machine"),
            ));
        }
        self
    }
}

/// The `quotas` and `quota_overrides` keys of `[tenants]` as written.
#[derive(Debug, Default)]
pub(crate) struct RawQuotas {
    pub(crate) defaults: Option<RawQuota>,
    pub(crate) overrides: BTreeMap<String, RawQuota>,
}

/// Every tenant's quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// What a tenant without an override gets.
    pub defaults: QuotaSettings,
    /// Tenants the operator set apart, each with the defaults under the keys
    /// it sets.
    pub overrides: BTreeMap<String, QuotaSettings>,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            defaults: QuotaSettings::builtin(),
            overrides: BTreeMap::new(),
        }
    }
}

impl Quotas {
    /// What `tenant` may use.
    pub fn of(&self, tenant: &str) -> QuotaSettings {
        self.overrides.get(tenant).copied().unwrap_or(self.defaults)
    }
}

pub(crate) fn validate_quotas(raw: RawQuotas, errors: &mut Vec<ConfigError>) -> Quotas {
    let defaults = match raw.defaults {
        Some(d) => QuotaSettings::builtin().overlaid(d, "tenants.quotas", errors),
        None => QuotaSettings::builtin(),
    };
    let mut overrides = BTreeMap::new();
    for (name, q) in raw.overrides {
        let key = format!("tenants.quota_overrides.{name}");
        if !crate::tenant::is_tenant_name(&name) {
            errors.push(ConfigError::new(
                key.clone(),
                format!("{name:?} is not a tenant name"),
            ));
        }
        overrides.insert(name, defaults.overlaid(q, &key, errors));
    }
    Quotas {
        defaults,
        overrides,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawQuota {
        toml::from_str(text).expect("quota keys parse")
    }

    #[test]
    fn overrides_take_the_defaults_under_the_keys_they_set() {
        let mut errors = Vec::new();
        let q = validate_quotas(
            RawQuotas {
                defaults: Some(raw(
                    "concurrent_requests = 100\nrequests_per_second = 50\nfilter_cpu_per_second = \"200ms\"\n",
                )),
                overrides: [("big".to_owned(), raw("concurrent_requests = 1000\n"))].into(),
            },
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let small = q.of("small");
        assert_eq!(small.concurrent_requests, Some(100));
        assert_eq!(small.request_burst(), Some(50));
        assert_eq!(small.kv_bytes, Some(DEFAULT_KV_BYTES));
        let big = q.of("big");
        assert_eq!(big.concurrent_requests, Some(1000));
        assert_eq!(big.filter_cpu_per_second, Some(Duration::from_millis(200)));
        assert_eq!(big.filter_concurrency_with(8), 4);
        assert_eq!(big.filter_concurrency_with(1), 1);
    }

    #[test]
    fn zero_and_bad_names_are_refused_with_their_keys() {
        let mut errors = Vec::new();
        validate_quotas(
            RawQuotas {
                defaults: Some(raw(
                    "concurrent_requests = 0\nfilter_cpu_per_request = \"0s\"\n",
                )),
                overrides: [("Not_A_Tenant".to_owned(), raw("kv_bytes = 0\n"))].into(),
            },
            &mut errors,
        );
        let keys: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tenants.quotas.concurrent_requests",
                "tenants.quotas.filter_cpu_per_request",
                "tenants.quota_overrides.Not_A_Tenant",
                "tenants.quota_overrides.Not_A_Tenant.kv_bytes",
            ]
        );
        assert!(errors[0].message.contains("more than 0"), "{errors:?}");
    }
}
