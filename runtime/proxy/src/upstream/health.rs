//! Active health checks: every `interval`, each endpoint of a cluster gets an
//! HTTP `GET path` (2xx or 3xx passes) or a TCP connect, bounded by
//! `timeout`; `unhealthy_threshold` failures in a row take it out of
//! rotation and `healthy_threshold` successes in a row bring it back.
//! Endpoints start healthy, so a gateway serves before the first round.

use std::sync::{Arc, Weak};

use http::Request;

use super::Cluster;
use super::endpoint::Endpoint;
use crate::body;
use wasmgate_config::cluster::HealthCheck;

/// Starts the checker of `cluster` if it has checks configured. It stops on
/// its own when the cluster is dropped.
pub fn spawn(cluster: &Arc<Cluster>) {
    let Some(check) = cluster.config.health_check.clone() else {
        return;
    };
    let weak: Weak<Cluster> = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(check.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(cluster) = weak.upgrade() else {
                return;
            };
            let mut round = tokio::task::JoinSet::new();
            for e in cluster.endpoints() {
                let (cluster, check) = (cluster.clone(), check.clone());
                round.spawn(async move {
                    let ok = probe(&cluster, &e, &check).await;
                    if let Some(now_healthy) =
                        e.record_check(ok, check.healthy_threshold, check.unhealthy_threshold)
                    {
                        if now_healthy {
                            tracing::info!(
                                cluster = &**cluster.name(),
                                endpoint = e.authority.as_str(),
                                "endpoint healthy again (active check)"
                            );
                        } else {
                            tracing::warn!(
                                cluster = &**cluster.name(),
                                endpoint = e.authority.as_str(),
                                "endpoint unhealthy (active check)"
                            );
                        }
                    }
                });
            }
            drop(cluster);
            while round.join_next().await.is_some() {}
        }
    });
}

async fn probe(cluster: &Cluster, e: &Endpoint, check: &HealthCheck) -> bool {
    let attempt = async {
        match &check.path {
            None => match cluster.reach() {
                None => tokio::net::TcpStream::connect(e.authority.as_str())
                    .await
                    .is_ok(),
                // A tenant's check connects only where its requests may.
                Some(reach) => match reach
                    .resolve(e.authority.host(), e.authority.port_u16().unwrap_or(80))
                    .await
                {
                    Ok(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
                    Err(_) => false,
                },
            },
            Some(path) => {
                let uri = format!("{}://{}{}", cluster.scheme(), e.authority, path);
                let host = check.host.as_deref().unwrap_or(e.authority.as_str());
                let Ok(req) = Request::get(uri)
                    .header(http::header::HOST, host)
                    .header(http::header::USER_AGENT, "wasmgate-health-check")
                    .body(body::empty())
                else {
                    return false;
                };
                match cluster.client().send(e.pool(), &e.authority, req).await {
                    Ok((resp, _connection)) => {
                        let s = resp.status();
                        s.is_success() || s.is_redirection()
                    }
                    Err(_) => false,
                }
            }
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or(false)
}
