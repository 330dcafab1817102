//! Whose names are whose. Filter, cluster and route names, `kv` keys and the
//! metric names filters record are unique within a tenant, not across the
//! gateway: everything that looks such a name up does so through a
//! [`Scoped`] name. Today there is one tenant, the default one; tenants
//! will each get their own, without changing the lookups.

use std::sync::Arc;

/// A tenant's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub Arc<str>);

impl TenantId {
    /// The tenant every name belongs to until tenants are configured.
    pub const DEFAULT: &'static str = "default";

    /// The default tenant.
    pub fn default_tenant() -> TenantId {
        TenantId(Arc::from(Self::DEFAULT))
    }

    /// Whether this is the default tenant.
    pub fn is_default(&self) -> bool {
        &*self.0 == Self::DEFAULT
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantId {
    fn default() -> Self {
        TenantId::default_tenant()
    }
}

/// A name and the tenant it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scoped {
    /// Whose it is.
    pub tenant: TenantId,
    /// The name, unique within the tenant.
    pub name: Arc<str>,
}

impl Scoped {
    /// `name` in `tenant`'s scope.
    pub fn new(tenant: TenantId, name: impl Into<Arc<str>>) -> Scoped {
        Scoped {
            tenant,
            name: name.into(),
        }
    }

    /// `name` in the default tenant's scope.
    pub fn default_tenant(name: impl Into<Arc<str>>) -> Scoped {
        Scoped::new(TenantId::default_tenant(), name)
    }
}

impl Scoped {
    /// The name as the filter store and the admin API key it: the name
    /// alone in the default tenant, `tenant/name` otherwise (unambiguous:
    /// neither a tenant's name nor a filter's may hold a `/`).
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// The scoped name a [`Scoped::key`] stands for.
    pub fn from_key(key: &str) -> Scoped {
        match key.split_once('/') {
            Some((tenant, name)) => Scoped::new(TenantId(Arc::from(tenant)), name),
            None => Scoped::default_tenant(key),
        }
    }
}

impl std::fmt::Display for Scoped {
    /// The name alone in the default tenant, `tenant/name` otherwise.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tenant.is_default() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.tenant.as_str(), self.name)
        }
    }
}

/// One scope's sections: the operator's own (the main config's `filters`,
/// `clusters` and `routes`) or a tenant's. Whatever is built per scope
/// (modules, pools, clusters, route tables) is built from one of these.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    /// Whose.
    pub tenant: TenantId,
    /// Its filters by name.
    pub filters: &'a std::collections::BTreeMap<String, crate::FilterConfig>,
    /// Its clusters by name.
    pub clusters: &'a std::collections::BTreeMap<String, crate::ClusterConfig>,
    /// Its routes in order.
    pub routes: &'a [crate::RouteConfig],
    /// Its descriptor sets (the operator's only: a tenant has none).
    pub descriptors: &'a std::collections::BTreeMap<String, crate::DescriptorConfig>,
    /// The host names it claims (none for the operator's scope, which serves
    /// the names no tenant claims).
    pub hosts: &'a [String],
    /// Its certificates (a tenant's; the operator's are `[server.tls]`).
    pub tls: Option<&'a crate::tls::TlsConfig>,
}

/// A tenant's descriptor sets: none.
static NO_DESCRIPTORS: std::collections::BTreeMap<String, crate::DescriptorConfig> =
    std::collections::BTreeMap::new();

impl<'a> Scope<'a> {
    /// A tenant's scope.
    pub fn of_tenant(t: &'a crate::TenantConfig) -> Scope<'a> {
        Scope {
            tenant: TenantId(Arc::from(t.name.as_str())),
            filters: &t.filters,
            clusters: &t.clusters,
            routes: &t.routes,
            descriptors: &NO_DESCRIPTORS,
            hosts: &t.hosts,
            tls: t.tls.as_ref(),
        }
    }

    /// The endpoint addresses its clusters write as addresses (not names).
    pub fn endpoint_addrs(&self) -> impl Iterator<Item = std::net::SocketAddr> + 'a {
        self.clusters
            .values()
            .flat_map(|c| &c.endpoints)
            .filter_map(|e| e.authority.as_str().parse().ok())
    }

    /// The metric series the gateway exports for it at most, as its
    /// config makes them: per route (requests by status class, the latency
    /// histogram), per filter on a route (calls by outcome, the call
    /// histogram, instance counters), per cluster and per endpoint, and the
    /// tenant's own. What its filters record themselves is capped apart.
    pub fn metric_series(&self) -> u64 {
        const TENANT: u64 = 20;
        const ROUTE: u64 = 5 + 23;
        const ROUTE_FILTER: u64 = 23 + 10 + 5;
        const CLUSTER: u64 = 12;
        const ENDPOINT: u64 = 2;
        let routes: u64 = self
            .routes
            .iter()
            .map(|r| ROUTE + ROUTE_FILTER * r.filters.len() as u64)
            .sum();
        let clusters: u64 = self
            .clusters
            .values()
            .map(|c| CLUSTER + ENDPOINT * c.endpoints.len() as u64)
            .sum();
        TENANT + routes + clusters
    }

    /// The instances its filter pools can hold (`pool_size` summed over
    /// every filter of every route).
    pub fn pool_instances(&self) -> u64 {
        self.routes
            .iter()
            .flat_map(|r| &r.filters)
            .filter_map(|f| self.filters.get(&f.name))
            .map(|f| u64::from(f.pool_size))
            .sum()
    }
}
