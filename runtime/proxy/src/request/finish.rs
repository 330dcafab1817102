//! Phase 6, finish: runs exactly once for every request, whatever ended it
//! (a response, a refusal, an error in any phase, the request timeout). The
//! answer gets the request id and loses the headers that would identify
//! the upstream; the request is counted (route, cluster, status class,
//! duration; each filter version it ran on), and its access log line is
//! handed to the body, which writes it when the body is done.

use std::sync::Arc;

use http::Response;

use super::{RequestError, Session};
use crate::access_log::LoggedBody;
use crate::body::ProxyBody;
use crate::proxy::Proxy;
use crate::route::Route;
use crate::upstream::Cluster;
use wasmgate_config::TenantId;
use wasmgate_metrics::{RequestLabels, status_class};

impl Proxy {
    /// Phase 6.
    pub(super) fn finish(
        &self,
        s: Session<'_>,
        outcome: Result<Response<ProxyBody>, RequestError>,
    ) -> Response<LoggedBody<ProxyBody>> {
        let mut resp = match outcome {
            Ok(resp) => resp,
            Err(e) => self.error_response(&s, e),
        };
        self.policy
            .forwarding
            .apply_response(resp.headers_mut(), &s.request_id);
        let status = resp.status().as_u16();
        self.record(s.route.as_deref(), s.rerouted.as_ref(), status, &s);
        if let Some(route) = &s.route {
            for (f, pick) in route.chain.iter().zip(&s.picks) {
                f.finish(pick, status);
            }
        }
        let log = match (&self.access_log, s.log) {
            (Some(log), Some(mut e)) => {
                e.status = status;
                Some((log.clone(), e, s.started))
            }
            _ => None,
        };
        resp.map(|b| LoggedBody::new(b, log).holding(s.admitted))
    }

    /// An error as the client sees it (logged first with what the client is
    /// not told). The one place a [`RequestError`] becomes a response.
    pub(super) fn error_response(&self, s: &Session<'_>, e: RequestError) -> Response<ProxyBody> {
        e.log(s.route_name(), s.id());
        e.into_response(s.id())
    }

    /// Counts a request. `cluster` is set when it went to another cluster
    /// than the one the route's pre-made handles are labelled with.
    fn record(
        &self,
        route: Option<&Route>,
        cluster: Option<&Arc<Cluster>>,
        status: u16,
        s: &Session<'_>,
    ) {
        let elapsed = || s.started.elapsed().as_secs_f64();
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        match (route, cluster) {
            (Some(r), None) => {
                r.metrics.by_class[class].inc();
                r.metrics.duration.observe(elapsed());
            }
            (Some(r), Some(c)) if let Some(handles) = r.metrics.of_cluster(c.name()) => {
                handles[class].inc();
                r.metrics.duration.observe(elapsed());
            }
            (Some(r), Some(c)) => {
                self.metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        tenant: r.tenant.as_str().to_owned(),
                        route: r.name.to_string(),
                        cluster: c.name().to_string(),
                        status_class: status_class(status).to_owned(),
                    })
                    .inc();
                r.metrics.duration.observe(elapsed());
            }
            (None, _) => {
                self.metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        tenant: s
                            .tenant
                            .as_ref()
                            .map_or(TenantId::DEFAULT, |t| t.as_str())
                            .to_owned(),
                        route: String::new(),
                        cluster: String::new(),
                        status_class: status_class(status).to_owned(),
                    })
                    .inc();
            }
        }
    }
}
