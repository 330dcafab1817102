//! Where a tenant's clusters may connect, checked against the address
//! actually dialled (after any DNS resolution), so that a name cannot route
//! around the rules.
//!
//! For a tenant's cluster (never the operator's own), an address is refused
//! when:
//! 1. a `tenants.deny` rule matches it;
//! 2. it is loopback, link-local (169.254.169.254, the cloud metadata
//!    address, included), unspecified, multicast or broadcast, unless an
//!    `allow` rule inside that range names it (the operator's explicit
//!    permission);
//! 3. `tenants.allow` is not empty and no rule of it matches;
//! 4. it is written as an endpoint of another tenant's cluster (or of the
//!    operator's), unless a `tenants.shared` rule matches it.
//!
//! A refusal is an error of its own ([`AddressDenied`]), answered as
//! `upstream_address_denied` and counted by tenant and cluster.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use wasmgate_config::TenantId;
use wasmgate_config::tenant::AddressRule;

/// The rules, gateway-wide; swapped whole when a config applies.
#[derive(Debug, Default)]
pub struct AddressGuard {
    rules: ArcSwap<GuardRules>,
}

/// What the guard checks against.
#[derive(Debug, Default, Clone)]
pub struct GuardRules {
    /// `tenants.allow`.
    pub allow: Vec<AddressRule>,
    /// `tenants.deny`.
    pub deny: Vec<AddressRule>,
    /// `tenants.shared`.
    pub shared: Vec<AddressRule>,
    /// Each endpoint address written in a cluster, with the tenant whose
    /// cluster writes it (the first, as they were admitted).
    pub owners: HashMap<SocketAddr, TenantId>,
}

/// Why a tenant's cluster may not connect to an address.
#[derive(Debug, Clone, thiserror::Error)]
#[error("tenant {tenant:?} may not connect to {addr}: {why}")]
pub struct AddressDenied {
    /// The tenant.
    pub tenant: TenantId,
    /// The address refused.
    pub addr: SocketAddr,
    /// Which rule refused it.
    pub why: &'static str,
}

/// The ranges a tenant reaches only when the operator allows them by name.
fn built_in(ip: IpAddr) -> Option<IpNet> {
    let nets: &[&str] = match ip {
        IpAddr::V4(_) => &[
            "127.0.0.0/8",
            "169.254.0.0/16",
            "0.0.0.0/8",
            "224.0.0.0/4",
            "255.255.255.255/32",
        ],
        IpAddr::V6(_) => &["::1/128", "fe80::/10", "::/128", "ff00::/8"],
    };
    nets.iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .find(|n| n.contains(&ip))
}

impl AddressGuard {
    /// Replaces the rules.
    pub fn set(&self, rules: GuardRules) {
        self.rules.store(Arc::new(rules));
    }

    /// Whether `tenant`'s cluster may connect to `addr`.
    pub fn check(&self, tenant: &TenantId, addr: SocketAddr) -> Result<(), AddressDenied> {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let rules = self.rules.load();
        let deny = |why| {
            Err(AddressDenied {
                tenant: tenant.clone(),
                addr,
                why,
            })
        };
        if rules.deny.iter().any(|r| r.matches(addr)) {
            return deny("it is in tenants.deny");
        }
        if let Some(net) = built_in(addr.ip())
            && !rules
                .allow
                .iter()
                .any(|r| r.within(&net) && r.matches(addr))
        {
            return deny(
                "loopback, link-local, unspecified and multicast addresses are reached only \
                 when tenants.allow names them",
            );
        }
        if !rules.allow.is_empty() && !rules.allow.iter().any(|r| r.matches(addr)) {
            return deny("it is not in tenants.allow");
        }
        if let Some(owner) = rules.owners.get(&addr)
            && owner != tenant
            && !rules.shared.iter().any(|r| r.matches(addr))
        {
            return deny("it is another party's cluster address (see tenants.shared)");
        }
        Ok(())
    }
}

/// One tenant's cluster's view of the guard.
#[derive(Debug, Clone)]
pub struct Reach {
    /// The rules.
    pub guard: Arc<AddressGuard>,
    /// Whose cluster it is.
    pub tenant: TenantId,
}

impl Reach {
    /// Whether the cluster may connect to `addr`.
    pub fn check(&self, addr: SocketAddr) -> Result<(), AddressDenied> {
        self.guard.check(&self.tenant, addr)
    }

    /// The addresses of `host:port` this cluster may dial: `host` itself
    /// when it is an address, else what it resolves to now. Fails when the
    /// first address is refused or none resolves.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, BoxedError> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let addr = match bare.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => tokio::net::lookup_host((bare, port))
                .await?
                .next()
                .ok_or_else(|| format!("{host} resolved to no address"))?,
        };
        self.check(addr)?;
        Ok(addr)
    }
}

type BoxedError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str], shared: &[&str]) -> GuardRules {
        let p = |l: &[&str]| l.iter().map(|s| AddressRule::parse(s).unwrap()).collect();
        GuardRules {
            allow: p(allow),
            deny: p(deny),
            shared: p(shared),
            owners: HashMap::new(),
        }
    }

    #[test]
    fn built_in_ranges_need_an_explicit_allow() {
        let g = AddressGuard::default();
        let t = TenantId(Arc::from("t"));
        let ok = |g: &AddressGuard, a: &str| g.check(&t, a.parse().unwrap()).is_ok();
        for a in [
            "127.0.0.1:80",
            "169.254.169.254:80",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
            "0.0.0.0:80",
            "[fe80::1]:80",
        ] {
            assert!(!ok(&g, a), "{a}");
        }
        assert!(ok(&g, "10.0.0.1:80"));
        // "Everything" is not a permission for loopback; naming it is.
        g.set(rules(&["0.0.0.0/0"], &[], &[]));
        assert!(!ok(&g, "127.0.0.1:80"));
        g.set(rules(&["127.0.0.1:8000-8999"], &[], &[]));
        assert!(ok(&g, "127.0.0.1:8080"));
        assert!(!ok(&g, "127.0.0.1:9901"), "another port");
        assert!(!ok(&g, "10.0.0.1:80"), "allow is a list of the only places");
        g.set(rules(&["127.0.0.0/8"], &["127.0.0.1:9901"], &[]));
        assert!(!ok(&g, "127.0.0.1:9901"), "deny wins");
        assert!(ok(&g, "127.0.0.2:9901"));
    }

    #[test]
    fn another_partys_address_is_theirs_unless_shared() {
        let g = AddressGuard::default();
        let (a, b) = (TenantId(Arc::from("a")), TenantId(Arc::from("b")));
        let mut r = rules(&[], &[], &[]);
        r.owners.insert("10.0.0.5:80".parse().unwrap(), a.clone());
        r.owners
            .insert("10.0.0.9:80".parse().unwrap(), TenantId::default_tenant());
        g.set(r.clone());
        assert!(g.check(&a, "10.0.0.5:80".parse().unwrap()).is_ok());
        assert!(g.check(&b, "10.0.0.5:80".parse().unwrap()).is_err());
        assert!(g.check(&b, "10.0.0.9:80".parse().unwrap()).is_err());
        assert!(g.check(&b, "10.0.0.5:81".parse().unwrap()).is_ok());
        r.shared = vec![AddressRule::parse("10.0.0.5").unwrap()];
        g.set(r);
        assert!(g.check(&b, "10.0.0.5:80".parse().unwrap()).is_ok());
    }
}
