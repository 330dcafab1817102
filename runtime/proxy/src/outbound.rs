//! The `outbound` host service on the proxy's side: a filter's request to a
//! named cluster, sent through that cluster's balancer, retries, health and
//! connection pools, exactly like a client's request (see
//! [`wasmgate_engine::services::Outbound`] for the seam and the budget).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request};

use crate::body::{self, FirstFrameError};
use crate::upstream::{Cluster, RequestBody};
use wasmgate_config::{Scoped, TenantId};
use wasmgate_engine::edits;
use wasmgate_engine::services::{Outbound, OutboundFuture};
use wasmgate_engine::wit_outbound::{OutboundError, OutboundRequest, OutboundResponse};
use wasmgate_metrics::{Metrics, OutboundLabels};

/// The clusters of the active config, as filters call them. One per
/// gateway: a reload swaps in the new config's clusters, so a module kept
/// across reloads calls the clusters that exist now.
#[derive(Debug)]
pub struct ClusterCaller {
    /// Each tenant's clusters by name: a filter calls its own tenant's.
    clusters: ArcSwap<HashMap<TenantId, HashMap<String, Arc<Cluster>>>>,
    /// Largest response body handed back (`limits.max_buffered_body`).
    max_body: std::sync::atomic::AtomicUsize,
    metrics: Arc<Metrics>,
}

impl ClusterCaller {
    /// Calls to no cluster yet, with response bodies of at most `max_body`
    /// bytes.
    pub fn new(max_body: usize, metrics: Arc<Metrics>) -> ClusterCaller {
        ClusterCaller {
            clusters: ArcSwap::default(),
            max_body: max_body.into(),
            metrics,
        }
    }

    /// Each tenant's filters call that tenant's `clusters`, with response
    /// bodies up to `max_body`, from now on.
    pub fn set_clusters(&self, clusters: crate::proxy::Clusters, max_body: usize) {
        self.clusters.store(Arc::new(clusters));
        self.max_body
            .store(max_body, std::sync::atomic::Ordering::Relaxed);
    }

    async fn call(
        &self,
        cluster: &Cluster,
        req: OutboundRequest,
        request_id: &str,
    ) -> Result<OutboundResponse, OutboundError> {
        let invalid = OutboundError::InvalidRequest;
        let method = Method::from_bytes(req.method.as_bytes())
            .map_err(|_| invalid(format!("{:?} is not an HTTP method", req.method)))?;
        if !req.path_with_query.starts_with('/') {
            return Err(invalid(format!(
                "path {:?} must start with `/` (a path, not a URL)",
                req.path_with_query
            )));
        }
        let path = PathAndQuery::try_from(req.path_with_query.as_str())
            .map_err(|e| invalid(format!("path {:?}: {e}", req.path_with_query)))?;
        let mut builder = Request::builder().method(method).uri(path);
        let headers = builder.headers_mut().expect("the builder has no error yet");
        for (n, v) in &req.headers {
            // Framing and hop-by-hop headers are refused by name.
            let name = edits::header_name(n).map_err(|e| invalid(e.to_string()))?;
            headers.append(
                name,
                edits::string_to_value(v).map_err(|e| invalid(e.to_string()))?,
            );
        }
        if headers.get_all(header::HOST).iter().count() > 1 {
            return Err(invalid("several Host headers".into()));
        }
        if !headers.contains_key("x-request-id")
            && let Ok(id) = HeaderValue::from_str(request_id)
        {
            headers.insert("x-request-id", id);
        }
        let data = req.body.map(Bytes::from).unwrap_or_default();
        if !data.is_empty() || !matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS") {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
        }
        let (parts, ()) = builder
            .body(())
            .map_err(|e| invalid(e.to_string()))?
            .into_parts();
        let key = cluster.hash_key(&parts.headers, None);
        let kept = body::Kept {
            data,
            trailers: None,
        };
        let forwarded = cluster
            .forward(parts, RequestBody::Replayable(kept), key)
            .await
            .map_err(|f| {
                OutboundError::Unavailable(f.to_gateway_error(cluster.name()).message.into_owned())
            })?;
        let (head, incoming) = forwarded.response.into_parts();
        let body = match body::collect(
            incoming,
            self.max_body.load(std::sync::atomic::Ordering::Relaxed),
        )
        .await
        {
            Ok(k) => k.data,
            Err(FirstFrameError::TooLarge) => return Err(OutboundError::ResponseTooLarge),
            Err(FirstFrameError::Invalid(e)) => {
                return Err(OutboundError::Unavailable(format!(
                    "cluster {:?} failed while sending the response body: {e}",
                    cluster.name()
                )));
            }
        };
        drop(forwarded.hold);
        Ok(OutboundResponse {
            status: head.status.as_u16(),
            headers: head
                .headers
                .iter()
                .filter(|(n, _)| !edits::is_protected(n))
                .map(|(n, v)| (n.as_str().to_owned(), edits::value_to_string(v)))
                .collect(),
            body: body.to_vec(),
        })
    }
}

fn outcome(r: &Result<OutboundResponse, OutboundError>) -> String {
    match r {
        Ok(resp) => format!("{}xx", resp.status / 100),
        Err(OutboundError::UnknownCluster) => "unknown_cluster".into(),
        Err(OutboundError::BudgetExhausted) => "budget_exhausted".into(),
        Err(OutboundError::InvalidRequest(_)) => "invalid_request".into(),
        Err(OutboundError::Timeout) => "timeout".into(),
        Err(OutboundError::Unavailable(_)) => "unavailable".into(),
        Err(OutboundError::ResponseTooLarge) => "response_too_large".into(),
    }
}

impl ClusterCaller {
    fn count(&self, filter: &str, cluster: &str, outcome: String) {
        self.metrics
            .filter_outbound
            .get_or_create(&OutboundLabels {
                filter: filter.to_owned(),
                cluster: cluster.to_owned(),
                outcome,
            })
            .inc();
    }
}

impl Outbound for ClusterCaller {
    fn refused(&self, from: &Scoped, error: &OutboundError) {
        // The cluster a refused call named is not a label value: it may be
        // anything, and the label set must stay bounded by the config.
        self.count(&from.to_string(), "", outcome(&Err(error.clone())));
    }

    fn send<'a>(
        &'a self,
        from: &'a Scoped,
        req: OutboundRequest,
        request_id: &'a str,
        timeout: Duration,
    ) -> OutboundFuture<'a> {
        Box::pin(async move {
            let found = self
                .clusters
                .load()
                .get(&from.tenant)
                .and_then(|c| c.get(&req.cluster).cloned());
            let Some(cluster) = found else {
                let error = OutboundError::UnknownCluster;
                self.refused(from, &error);
                return Err(error);
            };
            let result =
                match tokio::time::timeout(timeout, self.call(&cluster, req, request_id)).await {
                    Ok(r) => r,
                    Err(_) => Err(OutboundError::Timeout),
                };
            self.count(&from.to_string(), cluster.name(), outcome(&result));
            result
        })
    }
}
