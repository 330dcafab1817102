//! Tenants: parties that share one gateway, each with its own host names,
//! routes, clusters and filters, whose names are scoped to it.
//!
//! The main config's `[tenants]` section ([`TenancyConfig`]) is the
//! operator's: where file-managed tenants live (`dir`, one `NAME.toml` per
//! tenant), which tenant answers host names no tenant claims (`default`),
//! and where tenant clusters may connect (`allow`, `deny`, `shared`,
//! checked by the proxy against the address dialled). An endpoint address
//! is one party's: a tenant naming an address another party's cluster
//! already names is refused, unless `shared` covers it. Each tenant's own file ([`TenantConfig`])
//! holds `hosts` and the `[filters]`, `[clusters]` and `[[routes]]`
//! sections a main config has, validated by the same code, on its own: one
//! tenant's mistakes are reported against its own file and refuse that
//! tenant only.
//!
//! The main config's own filters, clusters and routes are the operator's
//! tenant, [`TenantId::DEFAULT`]: they serve every host no tenant claims,
//! unless `tenants.default` names a tenant to do that instead.
//!
//! Host claims are exclusive: two tenants naming one exact name or one
//! wildcard is an error ([`claims_conflict`]); an exact name under another
//! tenant's wildcard belongs to the exact name's owner.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::{
    ClusterConfig, Config, ConfigError, ConfigErrors, EngineConfig, FilterConfig, RouteConfig,
    Scope, Scoped, TenantId,
};

/// The `[tenants]` section as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenancy {
    dir: Option<PathBuf>,
    default: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    shared: Vec<String>,
    quotas: Option<crate::quota::RawQuota>,
    #[serde(default)]
    quota_overrides: BTreeMap<String, crate::quota::RawQuota>,
}

/// `[tenants]`: the operator's rules for tenants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenancyConfig {
    /// The folder of file-managed tenants (`NAME.toml` each), watched like
    /// the config file when `[watch]` is on.
    pub dir: Option<PathBuf>,
    /// The tenant that serves hosts no tenant claims, and TLS connections
    /// without SNI; `None`: the main config's own routes do.
    pub default: Option<String>,
    /// Where tenant clusters may connect: when not empty, only to these.
    /// Naming a loopback or link-local range here is the operator's
    /// explicit permission to reach it.
    pub allow: Vec<AddressRule>,
    /// Where tenant clusters may never connect, besides the built-in
    /// denials (loopback, link-local, unspecified, multicast, broadcast).
    /// Wins over `allow`.
    pub deny: Vec<AddressRule>,
    /// Endpoint addresses several parties' clusters may name; any other
    /// address one party's cluster names is denied to the others.
    pub shared: Vec<AddressRule>,
    /// What each tenant may use.
    pub quotas: crate::Quotas,
}

/// An address range with an optional port range: `"10.0.0.0/8"`,
/// `"192.0.2.7"`, `"10.0.0.0/8:8000-8999"`, `"[2001:db8::/32]:443"`. The
/// form of `tenants.allow`, `deny` and `shared` (checked against the address
/// a tenant's cluster dials, at connect time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRule {
    /// The addresses.
    pub net: IpNet,
    /// The ports, inclusive; `None`: every port.
    pub ports: Option<(u16, u16)>,
}

impl AddressRule {
    /// Parses a rule as written in `[tenants]`.
    pub fn parse(s: &str) -> Result<AddressRule, String> {
        let bad = || {
            format!(
                "{s:?} is not an address range: write \"10.0.0.0/8\", \"192.0.2.7\", \
                 \"10.0.0.0/8:8000-8999\" or \"[2001:db8::/32]:443\""
            )
        };
        let (addr, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
            let ports = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (inner, ports)
        } else if s.matches(':').count() == 1 {
            let (a, p) = s.split_once(':').ok_or_else(bad)?;
            (a, Some(p))
        } else {
            (s, None)
        };
        let net = match addr.parse::<IpNet>() {
            Ok(n) => n.trunc(),
            Err(_) => IpNet::from(addr.parse::<std::net::IpAddr>().map_err(|_| bad())?),
        };
        let ports = match ports {
            None => None,
            Some(p) => {
                let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                let lo: u16 = lo.parse().map_err(|_| bad())?;
                let hi: u16 = hi.parse().map_err(|_| bad())?;
                if lo > hi {
                    return Err(bad());
                }
                Some((lo, hi))
            }
        };
        Ok(AddressRule { net, ports })
    }

    /// Whether `addr` is in the range (IPv4-mapped IPv6 addresses as IPv4).
    pub fn matches(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.net.contains(&ip)
            && self
                .ports
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&addr.port()))
    }

    /// Whether the rule names a range inside `net` on purpose (the whole of
    /// it is inside), which is how `allow` lifts a built-in denial.
    pub fn within(&self, net: &IpNet) -> bool {
        net.contains(&self.net)
    }
}

pub(crate) fn validate_tenancy(
    raw: RawTenancy,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> TenancyConfig {
    let mut rules = |list: Vec<String>, key: &str| -> Vec<AddressRule> {
        list.iter()
            .enumerate()
            .filter_map(|(i, s)| match AddressRule::parse(s) {
                Ok(r) => Some(r),
                Err(m) => {
                    errors.push(ConfigError::new(format!("tenants.{key}[{i}]"), m));
                    None
                }
            })
            .collect()
    };
    let allow = rules(raw.allow, "allow");
    let deny = rules(raw.deny, "deny");
    let shared = rules(raw.shared, "shared");
    if let Some(d) = &raw.default
        && !is_tenant_name(d)
    {
        errors.push(ConfigError::new(
            "tenants.default",
            format!(
                "{d:?} is not a tenant name (lower-case letters, digits and single inner '-', \
                 at most 63; not \"default\")"
            ),
        ));
    }
    let quotas = crate::quota::validate_quotas(
        crate::quota::RawQuotas {
            defaults: raw.quotas,
            overrides: raw.quota_overrides,
        },
        errors,
    );
    TenancyConfig {
        dir: raw.dir.map(|d| base.join(d)),
        default: raw.default,
        allow,
        deny,
        shared,
        quotas,
    }
}

/// Who changes a tenant's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Managed {
    /// Its file in `tenants.dir`: the API may not change it (409).
    File(PathBuf),
    /// The management API (stored in the data directory).
    Api,
}

/// A tenant's file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    filters: BTreeMap<String, crate::filter::RawFilter>,
    #[serde(default)]
    clusters: BTreeMap<String, crate::cluster::RawCluster>,
    #[serde(default)]
    routes: Vec<crate::route::RawRoute>,
    tls: Option<crate::tls::RawTls>,
}

/// One tenant's validated config.
#[derive(Clone, PartialEq)]
pub struct TenantConfig {
    /// Its name (the file's stem for a file-managed tenant).
    pub name: String,
    /// Where it came from, for messages.
    pub source: String,
    /// The text it was parsed from.
    pub text: String,
    /// Who changes it.
    pub managed: Managed,
    /// The host names it claims, lower-case: exact names and `*.suffix`
    /// wildcards.
    pub hosts: Vec<String>,
    /// Its filters by name.
    pub filters: BTreeMap<String, FilterConfig>,
    /// Its clusters by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Its routes in order.
    pub routes: Vec<RouteConfig>,
    /// Its certificates, chosen by SNI among the names it claims.
    pub tls: Option<crate::tls::TlsConfig>,
}

impl std::fmt::Debug for TenantConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConfig")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("managed", &self.managed)
            .field("hosts", &self.hosts)
            .field("filters", &self.filters)
            .field("clusters", &self.clusters)
            .field("routes", &self.routes)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Whether `name` may name a tenant: lower-case letters, digits and single
/// inner `-` (like a DNS label), at most 63, and not `default`. Narrower
/// than other names, so that the metric names of a tenant's filters
/// (`wasmgate_t_<tenant>__…`) name one tenant only.
pub fn is_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
        && name != crate::TenantId::DEFAULT
}

impl TenantConfig {
    /// Reads and validates a file-managed tenant's file, named by its stem.
    pub fn load(path: &Path, engine: &EngineConfig) -> Result<TenantConfig, ConfigErrors> {
        let source = path.display().to_string();
        let fail = |m: String| ConfigErrors {
            source: source.clone(),
            errors: vec![ConfigError::new("", m)],
        };
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| fail("the file name is not a tenant name".into()))?
            .to_owned();
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("cannot read the tenant's file: {e}")))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut t = TenantConfig::parse(
            &name,
            &text,
            &source,
            &base,
            Managed::File(path.to_owned()),
            engine,
        )?;
        let mut errors = Vec::new();
        for (n, f) in &mut t.filters {
            crate::filter::read_secrets(&format!("filters.{n}"), f, &mut errors);
        }
        ConfigErrors::of(&source, errors).map_or(Ok(t), Err)
    }

    /// Parses and validates a tenant's config text (reading no secret).
    pub fn parse(
        name: &str,
        text: &str,
        source: &str,
        base: &Path,
        managed: Managed,
        engine: &EngineConfig,
    ) -> Result<TenantConfig, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source: source.to_owned(),
            errors,
        };
        if !is_tenant_name(name) {
            return Err(fail(vec![ConfigError::new(
                "",
                format!(
                    "{name:?} is not a tenant name: use lower-case letters, digits and single \
                     inner '-' (at most 63), and not \"default\""
                ),
            )]));
        }
        let raw: RawTenant = crate::parse_toml(text).map_err(|e| fail(vec![e]))?;
        let mut errors = Vec::new();
        let mut hosts = Vec::new();
        for (i, h) in raw.hosts.iter().enumerate() {
            match crate::parse_host_pattern(h) {
                Ok(h) if hosts.contains(&h) => errors.push(ConfigError::new(
                    format!("hosts[{i}]"),
                    format!("{h:?} is listed twice"),
                )),
                Ok(h) => hosts.push(h),
                Err(m) => errors.push(ConfigError::new(format!("hosts[{i}]"), m)),
            }
        }
        if raw.hosts.is_empty() {
            errors.push(ConfigError::new(
                "hosts",
                "a tenant claims at least one host name (\"shop.example\" or \"*.shop.example\")",
            ));
        }
        let crate::ScopeSections {
            filters,
            clusters,
            routes,
            ..
        } = crate::validate_scope(
            raw.filters,
            raw.clusters,
            raw.routes,
            None,
            engine,
            base,
            &mut errors,
        );
        if routes.is_empty() {
            errors.push(ConfigError::new(
                "routes",
                "no routes: add at least one [[routes]] entry",
            ));
        }
        // Its certificates serve only names it claims (all of them when a
        // certificate names none).
        let tls = raw.tls.map(|t| {
            let mut tls = crate::tls::validate("tls", t, base, &mut errors);
            for (i, c) in tls.certificates.iter_mut().enumerate() {
                if c.server_names.is_empty() {
                    c.server_names.clone_from(&hosts);
                }
                for (j, n) in c.server_names.iter().enumerate() {
                    let n = n.to_ascii_lowercase();
                    if !hosts.iter().any(|claim| covers(claim, &n)) {
                        errors.push(ConfigError::new(
                            format!("tls.certificates[{i}].server_names[{j}]"),
                            format!("{n:?} is not among the tenant's hosts"),
                        ));
                    }
                }
            }
            tls
        });
        // A route answers only host names its tenant claims.
        for (i, r) in routes.iter().enumerate() {
            for (j, h) in r.hosts.iter().enumerate() {
                if !hosts.iter().any(|claim| covers(claim, h)) {
                    errors.push(ConfigError::new(
                        format!("routes[{i}].hosts[{j}]"),
                        format!("{h:?} is not among the tenant's hosts"),
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(fail(errors));
        }
        Ok(TenantConfig {
            name: name.to_owned(),
            source: source.to_owned(),
            text: text.to_owned(),
            managed,
            hosts,
            filters,
            clusters,
            routes,
            tls,
        })
    }

    /// Every endpoint its clusters name, as written (`host:port`).
    pub fn endpoints(&self) -> impl Iterator<Item = (String, &str)> {
        self.clusters.iter().flat_map(|(name, c)| {
            c.endpoints.iter().enumerate().map(move |(i, e)| {
                (
                    format!("clusters.{name}.endpoints[{i}]"),
                    e.authority.as_str(),
                )
            })
        })
    }
}

/// The prefix of a file an API-managed tenant uploaded, as its config names
/// it: `upload:<sha256>`.
pub const UPLOAD_PREFIX: &str = "upload:";

impl TenantConfig {
    /// For an API-managed tenant parsed with `dir` (its uploads folder) as
    /// its base: makes every file it names one it uploaded. A file is
    /// written `upload:<sha256>` (what `PUT /tenants/NAME/uploads`
    /// answered) and becomes `dir/<sha256>`, which must exist; anything
    /// else (a path on the gateway's host, an environment variable) is an
    /// error, with its key path.
    pub fn resolve_uploads(&mut self, dir: &Path) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut literal_only = Vec::new();
        let tenant = self.name.clone();
        let mut fix = |key: String, p: &mut PathBuf| {
            let hex = p
                .strip_prefix(dir)
                .ok()
                .and_then(|rest| rest.to_str())
                .and_then(|rest| rest.strip_prefix(UPLOAD_PREFIX))
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_ascii_lowercase);
            match hex {
                Some(hex) if dir.join(&hex).is_file() => *p = dir.join(hex),
                Some(hex) => errors.push(ConfigError::new(
                    key,
                    format!("no upload {hex}: PUT /tenants/{tenant}/uploads first"),
                )),
                None => errors.push(ConfigError::new(
                    key,
                    "a tenant put through the API names no file on the gateway's host: write \
                     \"upload:<sha256>\" for a file uploaded with PUT /tenants/NAME/uploads",
                )),
            }
        };
        for (name, f) in &mut self.filters {
            fix(format!("filters.{name}.path"), &mut f.path);
            for (var, setting) in &f.vars {
                if *setting.source() != crate::SecretSource::Literal {
                    literal_only.push(ConfigError::new(
                        format!("filters.{name}.vars.{var}"),
                        "a tenant put through the API gives vars as literal strings only",
                    ));
                }
            }
        }
        for (name, c) in &mut self.clusters {
            if let Some(tls) = &mut c.tls {
                if let Some(ca) = &mut tls.ca {
                    fix(format!("clusters.{name}.tls.ca"), ca);
                }
                if let Some((cert, key)) = &mut tls.client_cert {
                    fix(format!("clusters.{name}.tls.client_cert"), cert);
                    fix(format!("clusters.{name}.tls.client_key"), key);
                }
            }
        }
        if let Some(tls) = &mut self.tls {
            for (i, c) in tls.certificates.iter_mut().enumerate() {
                fix(format!("tls.certificates[{i}].cert"), &mut c.cert);
                fix(format!("tls.certificates[{i}].key"), &mut c.key);
                if let Some(ca) = &mut c.client_ca {
                    fix(format!("tls.certificates[{i}].client_ca"), ca);
                }
            }
        }
        errors.extend(literal_only);
        errors
    }
}

/// Whether host claim `claim` covers route host `h`: the same pattern, an
/// exact name under a wildcard, or a wildcard under a wildcard.
fn covers(claim: &str, h: &str) -> bool {
    if claim == h {
        return true;
    }
    let Some(suffix) = claim.strip_prefix('*') else {
        return false;
    };
    let name = h.strip_prefix('*').unwrap_or(h);
    name.len() > suffix.len() && name.ends_with(suffix)
}

/// The first of `a`'s host claims that `b` also claims (the same exact name
/// or the same wildcard), if any.
pub fn claims_conflict<'a>(a: &'a TenantConfig, b: &TenantConfig) -> Option<&'a str> {
    let theirs: HashSet<&str> = b.hosts.iter().map(String::as_str).collect();
    a.hosts
        .iter()
        .map(String::as_str)
        .find(|h| theirs.contains(h))
}

/// Tenants refused, each with its errors, by name.
pub type Refused = Vec<(String, ConfigErrors)>;

/// Reads every `*.toml` in `dir` as a file-managed tenant: the valid ones,
/// and the errors of each that is not (by tenant name).
pub fn load_dir(
    dir: &Path,
    engine: &EngineConfig,
) -> Result<(Vec<TenantConfig>, Refused), ConfigErrors> {
    let entries = std::fs::read_dir(dir).map_err(|e| ConfigErrors {
        source: dir.display().to_string(),
        errors: vec![ConfigError::new(
            "tenants.dir",
            format!("cannot read the tenants folder {}: {e}", dir.display()),
        )],
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for p in paths {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match TenantConfig::load(&p, engine) {
            Ok(t) => good.push(t),
            Err(e) => bad.push((name, e)),
        }
    }
    Ok((good, bad))
}

/// The tenants' side of the whole config.
impl Config {
    /// Reads the config file at `path` as a reload does beside `running`:
    /// the main file must be valid; a tenant whose file is not (or whose
    /// host names another tenant took) keeps its running config, and is
    /// returned with its errors. API-managed tenants carry over.
    pub fn load_beside(path: &Path, running: &Config) -> Result<(Config, Refused), ConfigErrors> {
        let mut config = Config::load_main(path)?;
        if config.tenancy.is_some() {
            config.tenants = running
                .tenants
                .iter()
                .filter(|(_, t)| t.managed == Managed::Api)
                .map(|(n, t)| (n.clone(), t.clone()))
                .collect();
        }
        let refused = config.load_tenants(Some(running))?;
        for (name, _) in &refused {
            if let Some(t) = running.tenants.get(name) {
                // Its running config stays (it held its names already).
                let _ = config.admit_tenant(t.clone());
            }
        }
        Ok((config, refused))
    }

    /// Reads the file-managed tenants of `tenants.dir` into `tenants`
    /// (replacing the file-managed ones there; API-managed ones stay): the
    /// valid ones whose host claims conflict with no tenant read before
    /// them, and each refused one's errors, by name. The tenants that run
    /// unchanged in `running` are read first: a changed tenant cannot take
    /// a name from one that holds it. Fails only when the folder cannot be
    /// read.
    pub fn load_tenants(&mut self, running: Option<&Config>) -> Result<Refused, ConfigErrors> {
        let Some(dir) = self.tenancy.as_ref().and_then(|t| t.dir.clone()) else {
            return Ok(Vec::new());
        };
        let (mut good, mut bad) = load_dir(&dir, &self.engine)?;
        good.sort_by_key(|t| running.and_then(|r| r.tenants.get(&t.name)) != Some(t));
        self.tenants
            .retain(|_, t| !matches!(t.managed, Managed::File(_)));
        for t in good {
            if let Err(e) = self.admit_tenant(t.clone()) {
                bad.push((t.name, e));
            }
        }
        Ok(bad)
    }

    /// Adds or replaces tenant `t`, unless a name it claims is another
    /// tenant's (or it takes the engine's instances past its limit).
    pub fn admit_tenant(&mut self, t: TenantConfig) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        for (name, other) in &self.tenants {
            if *name == t.name {
                continue;
            }
            if let Some(h) = claims_conflict(&t, other) {
                let i = t.hosts.iter().position(|x| x == h).unwrap_or(0);
                errors.push(ConfigError::new(
                    format!("hosts[{i}]"),
                    format!("{h:?} is claimed by another tenant"),
                ));
            }
        }
        if t.tls.is_some() && self.server.tls.is_none() {
            errors.push(ConfigError::new(
                "tls",
                "the gateway's listener does not terminate TLS (no [server.tls] in its config)",
            ));
        }
        // An endpoint address is the first party's to name it.
        let shared = self.tenancy.as_ref().map_or(&[][..], |t| &t.shared[..]);
        let taken: std::collections::HashSet<std::net::SocketAddr> = self
            .scopes()
            .filter(|s| s.tenant.as_str() != t.name)
            .flat_map(|s| s.endpoint_addrs().collect::<Vec<_>>())
            .collect();
        for (key, written) in t.endpoints() {
            if let Ok(addr) = written.parse::<std::net::SocketAddr>()
                && taken.contains(&addr)
                && !shared.iter().any(|r| r.matches(addr))
            {
                errors.push(ConfigError::new(
                    key,
                    format!(
                        "{addr} is not an address this tenant may use: another party's cluster \
                         names it (tenants.shared lists addresses several may name)"
                    ),
                ));
            }
        }
        let scope = Scope::of_tenant(&t);
        if let Some(max) = self.quotas(&scope.tenant).metric_series
            && scope.metric_series() > u64::from(max)
        {
            errors.push(ConfigError::new(
                "routes",
                format!(
                    "this config would have the gateway export {} metric series for the tenant \
                     (routes, the filters on them, clusters, endpoints); its metric_series \
                     quota is {max}",
                    scope.metric_series()
                ),
            ));
        }
        let others: u64 = self
            .scopes()
            .filter(|s| s.tenant.as_str() != t.name)
            .map(|s| self.instance_share(&s.tenant, s.pool_instances()))
            .sum();
        let needed = others + self.instance_share(&scope.tenant, scope.pool_instances());
        if needed + 1 > u64::from(self.engine.max_instances) {
            errors.push(ConfigError::new(
                "filters",
                format!(
                    "the gateway's filter instances are taken: with this tenant the filter \
                     pools would hold {needed} of engine.max_instances ({})",
                    self.engine.max_instances
                ),
            ));
        }
        if let Some(e) = ConfigErrors::of(&t.source, errors) {
            return Err(e);
        }
        self.tenants.insert(t.name.clone(), t);
        Ok(())
    }

    /// The instances a scope whose pools can hold `pools` may hold at
    /// once: all of them for the operator's, no more than its
    /// `filter_instances` quota for a tenant's.
    pub fn instance_share(&self, tenant: &TenantId, pools: u64) -> u64 {
        if tenant.is_default() {
            return pools;
        }
        self.quotas(tenant)
            .filter_instances
            .map_or(pools, |q| pools.min(u64::from(q)))
    }

    /// What `tenant` may use (the defaults when there is no `[tenants]`).
    pub fn quotas(&self, tenant: &TenantId) -> crate::QuotaSettings {
        self.tenancy
            .as_ref()
            .map_or_else(crate::QuotaSettings::builtin, |t| {
                t.quotas.of(tenant.as_str())
            })
    }

    /// The filter a store key names ([`Scoped::key`]): the operator's, or a
    /// tenant's.
    pub fn filter_by_key(&self, key: &str) -> Option<&FilterConfig> {
        let s = Scoped::from_key(key);
        if s.tenant.is_default() {
            self.filters.get(&*s.name)
        } else {
            self.tenants.get(s.tenant.as_str())?.filters.get(&*s.name)
        }
    }

    /// The operator's own scope and each tenant's, in that order.
    pub fn scopes(&self) -> impl Iterator<Item = Scope<'_>> {
        std::iter::once(Scope {
            tenant: TenantId::default_tenant(),
            filters: &self.filters,
            clusters: &self.clusters,
            routes: &self.routes,
            descriptors: &self.descriptors,
            hosts: &[],
            tls: None,
        })
        .chain(self.tenants.values().map(Scope::of_tenant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> EngineConfig {
        EngineConfig {
            max_instances: 64,
            max_memory: 32 << 20,
            epoch_tick: std::time::Duration::from_millis(5),
            cache_dir: None,
        }
    }

    fn parse(text: &str) -> Result<TenantConfig, Vec<String>> {
        TenantConfig::parse(
            "shop",
            text,
            "shop.toml",
            Path::new("/srv"),
            Managed::Api,
            &engine(),
        )
        .map_err(|e| e.errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_tenant_is_validated_like_a_config_on_its_own() {
        let t = parse(
            "hosts = [\"Shop.example\", \"*.shop.example\"]\n\
             [clusters.api]\nendpoints = [\"10.0.0.1:80\"]\n\
             [[routes]]\nname = \"r\"\nhosts = [\"api.shop.example\"]\ncluster = \"api\"\n",
        )
        .unwrap();
        assert_eq!(t.hosts, ["shop.example", "*.shop.example"]);
        assert_eq!(t.routes[0].name, "r");
        let errs = parse(
            "hosts = [\"shop.example\", \"bad host\", \"shop.example\"]\n\
             [filters.f]\npath = \"f.wasm\"\nreroute_clusters = [\"theirs\"]\n\
             [[routes]]\nname = \"r\"\nhosts = [\"other.example\"]\ncluster = \"nope\"\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [
                "hosts[1]: \"bad host\" is not a host name or a \"*.domain\" wildcard",
                "hosts[2]: \"shop.example\" is listed twice",
                "filters.f.reroute_clusters[0]: no cluster named \"theirs\"",
                "routes[0].cluster: unknown cluster \"nope\" (defined: none)",
                "routes[0].hosts[0]: \"other.example\" is not among the tenant's hosts",
            ]
        );
        assert_eq!(
            parse("[[routes]]\nname = \"r\"\nrespond = {}\n").unwrap_err(),
            [
                "hosts: a tenant claims at least one host name (\"shop.example\" or \"*.shop.example\")"
            ]
        );
        assert_eq!(
            parse("hosts = [\"a.example\"]\n[server]\nlisten = \"0.0.0.0:1\"\n").unwrap_err(),
            [
                "server: unknown field `server`, expected one of `hosts`, `filters`, `clusters`, `routes`, `tls` (line 2, column 2)"
            ]
        );
    }

    #[test]
    fn the_default_name_and_odd_names_are_not_tenants() {
        for bad in [
            "default", "", "a/b", "..x/", "Shop", "a_b", "a.b", "-a", "a-", "a--b",
        ] {
            let e = TenantConfig::parse(
                bad,
                "hosts = [\"a.example\"]\n",
                "t",
                Path::new("/"),
                Managed::Api,
                &engine(),
            )
            .unwrap_err();
            assert!(
                e.errors[0].message.contains("is not a tenant name"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn wildcards_cover_names_under_them_only() {
        assert!(covers("*.shop.example", "a.shop.example"));
        assert!(covers("*.shop.example", "*.eu.shop.example"));
        assert!(covers("*.shop.example", "*.shop.example"));
        assert!(!covers("*.shop.example", "shop.example"));
        assert!(!covers("*.shop.example", "evilshop.example"));
        assert!(!covers("shop.example", "a.shop.example"));
    }

    #[test]
    fn address_rules_take_ranges_and_ports() {
        let r = AddressRule::parse("10.0.0.0/8:8000-8999").unwrap();
        assert!(r.matches("10.1.2.3:8080".parse().unwrap()));
        assert!(!r.matches("10.1.2.3:80".parse().unwrap()));
        assert!(!r.matches("11.1.2.3:8080".parse().unwrap()));
        let one = AddressRule::parse("192.0.2.7").unwrap();
        assert!(one.matches("192.0.2.7:1".parse().unwrap()));
        assert!(one.matches("[::ffff:192.0.2.7]:1".parse().unwrap()));
        let v6 = AddressRule::parse("[2001:db8::/32]:443").unwrap();
        assert!(v6.matches("[2001:db8::1]:443".parse().unwrap()));
        assert!(!v6.matches("[2001:db8::1]:80".parse().unwrap()));
        assert!(AddressRule::parse("fe80::/10").is_ok());
        for bad in ["10.0.0.0/33", "x", "10.0.0.1:99999", "10.0.0.1:9-1", "[::1"] {
            assert!(AddressRule::parse(bad).is_err(), "{bad}");
        }
        let loopback: IpNet = "127.0.0.0/8".parse().unwrap();
        assert!(AddressRule::parse("127.0.0.1").unwrap().within(&loopback));
        assert!(!AddressRule::parse("0.0.0.0/0").unwrap().within(&loopback));
    }

    #[test]
    fn host_claims_conflict_on_the_same_name_or_wildcard() {
        let t = |hosts: &str| {
            parse(&format!(
                "hosts = {hosts}\n[[routes]]\nname = \"r\"\nrespond = {{}}\n"
            ))
            .unwrap()
        };
        let a = t("[\"a.example\", \"*.shared.example\"]");
        let b = t("[\"x.shared.example\"]");
        let c = t("[\"*.shared.example\"]");
        assert_eq!(claims_conflict(&a, &b), None, "exact under a wildcard");
        assert_eq!(claims_conflict(&a, &c), Some("*.shared.example"));
    }

    #[test]
    fn tenants_load_from_their_folder_each_on_its_own() {
        let dir =
            std::env::temp_dir().join(format!("wasmgate-config-tenants-{}", std::process::id()));
        let tenants = dir.join("tenants");
        std::fs::create_dir_all(&tenants).unwrap();
        let route = "[[routes]]\nname = \"r\"\nrespond = {}\n";
        std::fs::write(
            tenants.join("a.toml"),
            format!("hosts = [\"*.shop.example\"]\n{route}"),
        )
        .unwrap();
        std::fs::write(
            tenants.join("b.toml"),
            format!("hosts = [\"b.shop.example\"]\n{route}"),
        )
        .unwrap();
        std::fs::write(
            tenants.join("c.toml"),
            format!("hosts = [\"*.shop.example\"]\n{route}"),
        )
        .unwrap();
        std::fs::write(tenants.join("d.toml"), "hosts = [\"d.example\"]\n").unwrap();
        std::fs::write(tenants.join("notes.txt"), "not a tenant").unwrap();
        std::fs::write(dir.join("gateway.toml"), "[tenants]\ndir = \"tenants\"\n").unwrap();
        let mut config =
            crate::Config::parse("[tenants]\ndir = \"tenants\"\n", "gateway.toml", &dir).unwrap();
        let bad = config.load_tenants(None).unwrap();
        assert_eq!(config.tenants.keys().collect::<Vec<_>>(), ["a", "b"]);
        let bad: Vec<(String, Vec<String>)> = bad
            .into_iter()
            .map(|(n, e)| (n, e.errors.iter().map(ToString::to_string).collect()))
            .collect();
        assert_eq!(
            bad,
            [
                (
                    "d".to_owned(),
                    vec!["routes: no routes: add at least one [[routes]] entry".to_owned()]
                ),
                (
                    "c".to_owned(),
                    vec!["hosts[0]: \"*.shop.example\" is claimed by another tenant".to_owned()]
                ),
            ]
        );
        let scopes: Vec<String> = config
            .scopes()
            .map(|s| s.tenant.as_str().to_owned())
            .collect();
        assert_eq!(scopes, ["default", "a", "b"]);
        // `load` refuses on any bad tenant, naming its file.
        let e = crate::Config::load(&dir.join("gateway.toml")).unwrap_err();
        assert!(e.source.ends_with("d.toml"), "{e}");
    }
}
