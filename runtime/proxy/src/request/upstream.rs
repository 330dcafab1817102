//! Phase 4, the upstream: the cluster the request goes to (with the prefix
//! rewritten, under the route's timeout), or the answer a redirect or
//! direct-response route makes; a WebSocket tunnel after a `101`. The
//! cache's two slots sit around it.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::early::{declared_length, strip_hop_by_hop};
use super::{RequestError, Session};
use crate::body::{self, ProxyBody};
use crate::proxy::{ConnHold, Proxy};
use crate::route::{Route, rerouted};
use crate::upstream::{Cluster, Forwarded, RequestBody, UpstreamFailure};
use wasmgate_metrics::Metrics;

/// A request body on its way to the upstream.
#[derive(Debug)]
pub(crate) enum ForwardBody {
    /// Streamed from the client.
    Stream(Incoming),
    /// Read whole for filters (and possibly replaced by one).
    Kept(body::Kept),
    /// Made by the gateway as it streams (a gRPC-Web text body, decoded).
    Made(ProxyBody),
}

impl From<Incoming> for ForwardBody {
    fn from(body: Incoming) -> ForwardBody {
        ForwardBody::Stream(body)
    }
}

impl Proxy {
    /// Phase 4: the response to send back through the response-side
    /// filters. An upstream failure is answered here, in the standard
    /// format, so those filters see it like any response.
    pub(super) async fn upstream(
        &self,
        s: &mut Session<'_>,
        route: &Arc<Route>,
        target: Option<&Arc<Cluster>>,
        parts: Parts,
        body: ForwardBody,
        chain: Option<&super::filters::ChainRun>,
    ) -> Response<ProxyBody> {
        if let (Some(_), Some(cluster)) = (&route.cache, target) {
            // Boxed: the lean path's future stays small.
            return Box::pin(self.cached_upstream(s, route, cluster, parts, body, chain)).await;
        }
        self.forwarded(s, route, target, parts, body).await
    }

    /// The upstream's response, or the failure's in the standard format.
    pub(super) async fn forwarded(
        &self,
        s: &mut Session<'_>,
        route: &Route,
        target: Option<&Arc<Cluster>>,
        parts: Parts,
        body: ForwardBody,
    ) -> Response<ProxyBody> {
        let (parts, body) = match route.translation {
            // Boxed: the lean path's future stays small.
            Some(_) => match Box::pin(self.translated(s, route, target, parts, body)).await {
                Ok(resp) => return resp,
                Err(untranslated) => untranslated,
            },
            None => (parts, body),
        };
        match self.dispatch(s, route, target, parts, body).await {
            Ok(resp) => resp,
            Err(e) => self.error_response(s, e),
        }
    }

    /// Forwards to `target` (with the prefix rewritten, under the route's
    /// timeout), or, when there is none, makes the route's own redirect or
    /// response.
    pub(super) async fn dispatch(
        &self,
        s: &mut Session<'_>,
        route: &Route,
        target: Option<&Arc<Cluster>>,
        mut parts: Parts,
        body: ForwardBody,
    ) -> Result<Response<ProxyBody>, RequestError> {
        let Some(cluster) = target else {
            let scheme = s.client.as_ref().map_or("http", |c| c.scheme);
            return route.local_response(&parts, scheme);
        };
        s.rerouted = rerouted(route, Some(cluster)).cloned();
        if let Some(e) = s.log.as_mut() {
            e.cluster = Some(cluster.name().clone());
        }
        route.rewrite_path(&mut parts);
        let forwarded = self.forward(s, cluster, parts, body);
        match route.timeout {
            None => forwarded.await,
            Some(timeout) => match tokio::time::timeout(timeout, forwarded).await {
                Ok(resp) => resp,
                Err(_) => Err(RequestError::RouteTimeout {
                    cluster: cluster.name().clone(),
                    timeout,
                }),
            },
        }
    }

    /// Sends the request to `cluster` and returns its response with
    /// hop-by-hop headers removed.
    async fn forward(
        &self,
        s: &mut Session<'_>,
        cluster: &Arc<Cluster>,
        mut parts: Parts,
        body: ForwardBody,
    ) -> Result<Response<ProxyBody>, RequestError> {
        let client_ip = s.client.as_ref().map_or(s.conn.peer.ip(), |c| {
            c.forwarded_client.unwrap_or(c.peer.ip())
        });
        // The client's side of an upgrade; the upstream request must not carry it.
        let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let upgrading = parts.headers.contains_key(header::UPGRADE);
        if upgrading && !cluster.supports_upgrade() {
            // HTTP/2 to the upstream has no Upgrade: send a plain request.
            parts.headers.remove(header::CONNECTION);
            parts.headers.remove(header::UPGRADE);
        }
        let limit = self.policy.limits.max_request_body;
        let body = match body {
            ForwardBody::Kept(kept) => {
                // The body went through filters and may have changed.
                parts.headers.remove(header::TRANSFER_ENCODING);
                if !kept.data.is_empty() || parts.headers.contains_key(header::CONTENT_LENGTH) {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(kept.data.len()));
                }
                RequestBody::Replayable(kept)
            }
            ForwardBody::Made(body) => RequestBody::Once(body),
            ForwardBody::Stream(body) if hyper::body::Body::is_end_stream(&body) => {
                RequestBody::Replayable(body::Kept::default())
            }
            ForwardBody::Stream(body)
                if cluster.retries()
                    && !upgrading
                    && declared_length(&parts.headers)
                        .is_some_and(|n| n <= cluster.retry_body_limit() as u64) =>
            {
                // Small enough to keep for a retry.
                let kept = Box::pin(body::collect(body, limit)).await;
                RequestBody::Replayable(kept.map_err(|e| RequestError::Body(e, limit))?)
            }
            ForwardBody::Stream(body) if s.chunked => RequestBody::Once(
                body::stream_checked(body, limit)
                    .await
                    .map_err(|e| RequestError::Body(e, limit))?,
            ),
            ForwardBody::Stream(body) => RequestBody::Once(body::stream(body, limit)),
        };
        let key = cluster.hash_key(&parts.headers, Some(client_ip));
        // Boxed (as hyper-util boxes its own request future): the try loop's
        // state is large, and every future that holds it inline is moved
        // into place by value for every request.
        let Forwarded {
            response: mut resp,
            endpoint,
            hold,
            ..
        } = Box::pin(cluster.forward(parts, body, key))
            .await
            .map_err(|failure| RequestError::Upstream {
                cluster: cluster.name().clone(),
                failure,
            })?;
        if let Some(e) = s.log.as_mut() {
            e.endpoint = Some(endpoint.authority.to_string());
        }
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let protocol = resp.headers().get(header::UPGRADE).cloned();
        if switching {
            let websocket = protocol
                .as_ref()
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
            let (true, Some(client)) = (upgrading && websocket, client_upgrade) else {
                return Err(RequestError::Upstream {
                    cluster: cluster.name().clone(),
                    failure: UpstreamFailure::Other(
                        "101 Switching Protocols to a request that asked for no upgrade, or \
                         to another protocol than WebSocket"
                            .into(),
                    ),
                });
            };
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(
                client,
                upstream,
                self.policy.limits.tunnel_idle_timeout,
                s.id().to_owned(),
                self.metrics.clone(),
                s.conn.hold.clone(),
            ));
        }
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        if let (true, Some(protocol)) = (switching, protocol) {
            rparts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            rparts.headers.insert(header::UPGRADE, protocol);
        }
        Ok(Response::from_parts(
            rparts,
            body::stream_holding(rbody, hold),
        ))
    }
}

/// Splices an upgraded connection: bytes both ways until either side closes
/// or nothing moves for `idle`.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: std::time::Duration,
    request_id: String,
    metrics: Arc<Metrics>,
    hold: Option<ConnHold>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(request_id, "upgrade not completed: {e}");
            return;
        }
    };
    metrics.upgrades.inc();
    metrics.active_tunnels.inc();
    let mut client = crate::idle::IdleIo::new(hyper_util::rt::TokioIo::new(client));
    let activity = client.activity();
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let mut shutdown = hold.as_ref().map(|h| h.shutdown.clone());
    let stopping = async {
        match shutdown.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|stop| *stop).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = stopping => tracing::debug!(request_id, "tunnel closed: shutting down"),
        r = copy => match r {
            Ok((up, down)) => tracing::debug!(request_id, up, down, "tunnel closed"),
            Err(e) => tracing::debug!(request_id, "tunnel ended: {e}"),
        },
        () = activity.idle_for(idle) => {
            tracing::debug!(request_id, "tunnel idle for {idle:?}: closed");
        }
    }
    metrics.active_tunnels.dec();
    // The connection's place under `max_connections` is released only now.
    drop(hold);
}
