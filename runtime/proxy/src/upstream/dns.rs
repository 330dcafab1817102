//! Endpoints given as host names: resolved when the cluster is built and
//! again every `dns_refresh`; each address becomes an endpoint (the name is
//! kept for TLS). A resolution that fails or returns nothing keeps the last
//! good addresses. Resolution goes through [`Resolve`], so tests (and
//! embedders) can substitute their own.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use http::uri::Authority;

use super::Cluster;
use wasmgate_config::cluster::ClusterConfig;

/// Resolves a host name and port to addresses.
pub trait Resolve: Send + Sync + std::fmt::Debug {
    /// The addresses of `host`.
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>,
    >;
}

/// The system resolver (`getaddrinfo` through tokio).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>,
    > {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// (dialled authority, configured origin, weight) of each endpoint.
pub(crate) type EndpointList = Vec<(Authority, Arc<str>, u32)>;

fn is_ip(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok()
}

/// Whether any endpoint is a host name.
pub fn has_names(config: &ClusterConfig) -> bool {
    config.endpoints.iter().any(|e| !is_ip(e.authority.host()))
}

/// Resolves every host name once. `previous` supplies the last good
/// addresses of a name that fails now; a name never resolved is dialled as
/// written (the connector resolves it).
async fn resolve_all(
    cluster: &str,
    config: &ClusterConfig,
    resolver: &dyn Resolve,
    previous: Option<&[Arc<super::endpoint::Endpoint>]>,
) -> EndpointList {
    let mut out = Vec::new();
    for e in &config.endpoints {
        let origin: Arc<str> = Arc::from(e.authority.as_str());
        let host = e.authority.host();
        let port = e.authority.port_u16().unwrap_or(80);
        if is_ip(host) {
            out.push((e.authority.clone(), origin, e.weight));
            continue;
        }
        let resolved = match resolver.resolve(host, port).await {
            Ok(addrs) if !addrs.is_empty() => {
                let mut addrs = addrs;
                addrs.sort();
                addrs.dedup();
                Some(addrs)
            }
            Ok(_) => {
                tracing::warn!(
                    cluster,
                    host,
                    "resolved to no addresses; keeping the last good ones"
                );
                None
            }
            Err(err) => {
                tracing::warn!(
                    cluster,
                    host,
                    "resolution failed ({err}); keeping the last good addresses"
                );
                None
            }
        };
        match resolved {
            Some(addrs) => {
                for a in addrs {
                    if let Ok(authority) = a.to_string().parse::<Authority>() {
                        out.push((authority, origin.clone(), e.weight));
                    }
                }
            }
            None => {
                let kept: Vec<_> = previous
                    .unwrap_or(&[])
                    .iter()
                    .filter(|p| *p.origin == *origin)
                    .map(|p| (p.authority.clone(), origin.clone(), p.weight))
                    .collect();
                if kept.is_empty() {
                    out.push((e.authority.clone(), origin, e.weight));
                } else {
                    out.extend(kept);
                }
            }
        }
    }
    out
}

/// The endpoints a new cluster starts with.
pub(crate) async fn initial_endpoints(
    cluster: &str,
    config: &ClusterConfig,
    resolver: &dyn Resolve,
) -> EndpointList {
    resolve_all(cluster, config, resolver, None).await
}

/// Re-resolves `cluster`'s host names every `dns_refresh` until the cluster
/// is dropped.
pub fn spawn(cluster: &Arc<Cluster>, resolver: Arc<dyn Resolve>) {
    if !has_names(&cluster.config) {
        return;
    }
    let weak: Weak<Cluster> = Arc::downgrade(cluster);
    let every = cluster.config.dns_refresh;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(cluster) = weak.upgrade() else {
                return;
            };
            let current = cluster.endpoints();
            let fresh =
                resolve_all(cluster.name(), &cluster.config, &*resolver, Some(&current)).await;
            let changed = fresh.len() != current.len()
                || fresh
                    .iter()
                    .zip(&current)
                    .any(|((a, _, w), e)| *a != e.authority || *w != e.weight);
            if changed {
                tracing::info!(
                    cluster = &**cluster.name(),
                    endpoints = ?fresh.iter().map(|(a, _, _)| a.as_str()).collect::<Vec<_>>(),
                    "endpoints changed after resolution"
                );
                cluster.replace_endpoints(fresh);
            }
        }
    });
}
