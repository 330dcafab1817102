//! A route's filter chain as the request path runs it: for each filter, the
//! version every request runs on by default (its `RouteVersion`: the pool of
//! instances for this route's config and what the filter declared at
//! `init`), a canary version with the requests it takes, and the failure
//! policy. How calls are made and decisions applied is
//! [`crate::request`]'s and the engine's ([`wasmgate_engine::edits`]).

use std::sync::Arc;

use http::HeaderMap;

use crate::canary::{Canary, VersionStats};
use wasmgate_engine::InstancePool;
use wasmgate_engine::edits::Needs;

/// One version of a filter, ready for one route.
#[derive(Debug)]
pub struct RouteVersion {
    /// The instances of this version for this route's config.
    pub pool: InstancePool,
    /// What it declared at `init`.
    pub needs: Needs,
    /// Its version number.
    pub version: u64,
    /// Requests it handled, over every route.
    pub stats: Arc<VersionStats>,
}

/// One filter in a route's chain.
#[derive(Debug)]
pub struct ChainFilter {
    /// The current version. Shared with the generation before when
    /// neither its module nor this route's config of it changed, so its
    /// pool (warm instances, quarantine) carries over.
    pub stable: Arc<RouteVersion>,
    /// A canary version and the requests it takes.
    pub canary: Option<(Arc<Canary>, Arc<RouteVersion>)>,
    /// Skip the filter when it fails, instead of failing the request.
    pub fail_open: bool,
    /// Request headers the filters after this one may not set or remove
    /// (the route's `seal`).
    pub seal: Vec<http::HeaderName>,
}

/// Which version of one filter a request runs on (picked once, as it
/// enters the chain, so both phases run on it), and what happened to it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pick {
    /// The canary version, not the current one.
    pub canary: bool,
    /// The filter was called for this request (a filter that an earlier
    /// one's answer or failure kept from running is not counted).
    pub ran: bool,
    /// It failed on this request.
    pub failed: bool,
}

impl ChainFilter {
    /// The filter's name.
    pub fn name(&self) -> &Arc<str> {
        self.stable.pool.module().name()
    }

    /// Picks the version this request runs on.
    pub fn pick(&self, headers: &HeaderMap, request_id: &str) -> Pick {
        Pick {
            canary: self
                .canary
                .as_ref()
                .is_some_and(|(c, _)| c.takes(headers, request_id)),
            ..Pick::default()
        }
    }

    /// The version `pick` chose.
    pub fn arm(&self, pick: &Pick) -> &RouteVersion {
        match &self.canary {
            Some((_, arm)) if pick.canary => arm,
            _ => &self.stable,
        }
    }

    /// Counts the request for the version it ran on (and its canary) once
    /// the response is known.
    pub fn finish(&self, pick: &Pick, status: u16) {
        if !pick.ran {
            return;
        }
        let bad = self.arm(pick).stats.record(status, pick.failed);
        if let Some((c, _)) = self.canary.as_ref().filter(|_| pick.canary) {
            c.record(bad);
        }
    }
}
