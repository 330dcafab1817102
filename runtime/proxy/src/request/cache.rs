//! The response cache's place in the request path, around phase 4: a
//! lookup after the request-side filters (a hit is answered without the
//! upstream, so an auth filter still refuses before a hit is served), and
//! the upstream's answer offered to the cache before the response-side
//! filters (which therefore run on hits and misses alike). Both see the
//! route, so caching is set per route (`[routes.cache]`); the cache itself
//! is [`crate::response_cache`].
//!
//! Besides hits and misses: a stale answer served under
//! `stale-while-revalidate` starts one refresh in the background; a failed
//! upstream answer is replaced by a stale one under `stale-if-error`; a
//! successful unsafe method removes what is stored for its URL.

use std::sync::Arc;

use http::Response;
use http::request::Parts;

use super::Session;
use super::early::strip_hop_by_hop;
use super::filters::ChainRun;
use super::upstream::ForwardBody;
use crate::body::{self, ProxyBody};
use crate::proxy::Proxy;
use crate::response_cache::{Key, Lookup, Pending};
use crate::route::Route;
use crate::upstream::{Cluster, RequestBody};
use wasmgate_config::response_cache::KeyPart;

impl Proxy {
    /// Phase 4 on a route that caches: a stored answer, or the upstream's
    /// (offered to the cache).
    pub(super) async fn cached_upstream(
        &self,
        s: &mut Session<'_>,
        route: &Arc<Route>,
        cluster: &Arc<Cluster>,
        mut parts: Parts,
        body: ForwardBody,
        chain: Option<&ChainRun>,
    ) -> Response<ProxyBody> {
        let Some(config) = route.cache.as_ref() else {
            return self.forwarded(s, route, Some(cluster), parts, body).await;
        };
        let cache = &self.policy.response_cache;
        let key = self.cache_key(s, route, cluster, &parts, chain);
        let budget = route.quota.as_ref().and_then(|q| q.cache_bytes());
        let log = |s: &mut Session<'_>, what: &'static str| {
            if let Some(e) = s.log.as_mut() {
                e.cache = Some(what);
            }
        };
        match cache.lookup(key, &mut parts, config, budget).await {
            Lookup::Hit(hit) => {
                log(s, "hit");
                hit
            }
            Lookup::Stale { response, refresh } => {
                log(s, "stale");
                if let Some(refresh) = refresh {
                    self.refresh(s, route, cluster, &parts, refresh);
                }
                response
            }
            Lookup::Bypass { invalidate } => {
                log(s, "bypass");
                let mut resp = self.forwarded(s, route, Some(cluster), parts, body).await;
                if let Some(key) = invalidate
                    && (resp.status().is_success() || resp.status().is_redirection())
                {
                    cache.invalidate(&key);
                }
                cache.mark_bypass(&mut resp);
                resp
            }
            Lookup::Miss(pending) => {
                log(s, "miss");
                pending.prepare(&mut parts);
                let failed = match self.dispatch(s, route, Some(cluster), parts, body).await {
                    Ok(resp) if !resp.status().is_server_error() => {
                        return cache.answer(pending, config, resp);
                    }
                    failed => failed,
                };
                let status = failed.as_ref().ok().map(Response::status);
                if let Some(stale) = cache.stale_if_error(&pending, status) {
                    log(s, "stale");
                    return stale;
                }
                match failed {
                    Ok(resp) => cache.answer(pending, config, resp),
                    Err(e) => {
                        let mut resp = self.error_response(s, e);
                        cache.mark_bypass(&mut resp);
                        resp
                    }
                }
            }
        }
    }

    /// The key of this request's answer from `cluster`.
    fn cache_key(
        &self,
        s: &Session<'_>,
        route: &Route,
        cluster: &Arc<Cluster>,
        parts: &Parts,
        chain: Option<&ChainRun>,
    ) -> Key {
        let host = crate::route::authority_of(parts)
            .and_then(crate::router::normalize_host)
            .unwrap_or_default();
        let mut extra = String::new();
        for part in route.cache.iter().flat_map(|c| &c.key) {
            use std::fmt::Write;
            let value: Option<std::borrow::Cow<'_, str>> = match part {
                KeyPart::Header(h) => {
                    let mut all = parts.headers.get_all(h).iter().peekable();
                    all.peek().is_some().then(|| {
                        all.map(|v| String::from_utf8_lossy(v.as_bytes()))
                            .collect::<Vec<_>>()
                            .join(",")
                            .into()
                    })
                }
                KeyPart::Cookie(name) => parts
                    .headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|c| {
                        let (k, v) = c.trim().split_once('=')?;
                        (k == name).then(|| v.into())
                    }),
                KeyPart::Context(filter) => chain
                    .and_then(|c| c.context(route, filter))
                    .map(String::from_utf8_lossy),
            };
            // Named, and length-prefixed: no value can pass for another part.
            let value = value.unwrap_or_default();
            let _ = write!(extra, "{}={}:{};", part.describe(), value.len(), value);
        }
        Key {
            tenant: route.tenant.0.clone(),
            route: route.name.clone(),
            cluster: cluster.name().clone(),
            scheme: s.client.as_ref().map_or("http", |c| c.scheme),
            host: host.into_owned(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
            extra,
        }
    }

    /// Starts the one background refresh of a stale answer served under
    /// `stale-while-revalidate`: the request again (as a `GET`, with the
    /// stored answer's validators) to the same cluster, its answer stored.
    fn refresh(
        &self,
        s: &Session<'_>,
        route: &Arc<Route>,
        cluster: &Arc<Cluster>,
        parts: &Parts,
        pending: Box<Pending>,
    ) {
        let Some(config) = route.cache.clone() else {
            return;
        };
        let mut request = pending.refresh_request(parts);
        route.rewrite_path(&mut request);
        let client_ip = s.client.as_ref().map_or(s.conn.peer.ip(), |c| {
            c.forwarded_client.unwrap_or(c.peer.ip())
        });
        let hash = cluster.hash_key(&request.headers, Some(client_ip));
        let (cluster, cache, timeout) = (
            cluster.clone(),
            self.policy.response_cache.clone(),
            route.timeout,
        );
        tokio::spawn(async move {
            let forwarded = cluster.forward(
                request,
                RequestBody::Replayable(body::Kept::default()),
                hash,
            );
            let forwarded = match timeout {
                Some(t) => tokio::time::timeout(t, forwarded).await.ok(),
                None => Some(forwarded.await),
            };
            // On failure the pending refresh is dropped: its lock goes, and
            // the next stale request may start another.
            let Some(Ok(f)) = forwarded else { return };
            let (mut head, incoming) = f.response.into_parts();
            strip_hop_by_hop(&mut head.headers);
            let resp = Response::from_parts(head, body::stream_holding(incoming, f.hold));
            let mut resp = cache.answer(pending, &config, resp);
            // Read to its end: the copy is stored as the body ends.
            use http_body_util::BodyExt;
            while let Some(frame) = resp.body_mut().frame().await {
                if frame.is_err() {
                    break;
                }
            }
        });
    }
}
