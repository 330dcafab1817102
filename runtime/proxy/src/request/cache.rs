//! The response cache's two slots in the request path, empty until the
//! cache lands: a lookup after the request-side filters (a hit is answered
//! without the upstream) and a store of what the upstream answered, before
//! the response-side filters (which therefore run on hits and misses
//! alike). Both see the route, so caching can be set per route.

use http::Response;
use http::request::Parts;

use super::Session;
use crate::body::ProxyBody;
use crate::proxy::Proxy;
use crate::route::Route;

impl Proxy {
    /// A stored response for this request, if the cache has a fresh one.
    pub(super) fn cache_lookup(
        &self,
        _s: &mut Session<'_>,
        _route: &Route,
        _parts: &Parts,
    ) -> Option<Response<ProxyBody>> {
        None
    }

    /// Offers the upstream's response to the cache.
    pub(super) fn cache_store(
        &self,
        _s: &mut Session<'_>,
        _route: &Route,
        _resp: &mut Response<ProxyBody>,
    ) {
    }
}
