//! wasmgate: a WebAssembly-extensible API gateway and reverse proxy.
//!
//! The library behind the `wasmgate` binary: one facade over the layers,
//! each its own crate (see `ARCHITECTURE.md`):
//!
//! - [`config`] (`wasmgate-config`): `gateway.toml`, validated and typed;
//! - [`metrics`] (`wasmgate-metrics`): the Prometheus registry;
//! - [`filter`] (`wasmgate-engine`): the filter engine, usable on its own;
//! - the data plane (`wasmgate-proxy`): [`server`], [`proxy`], [`chain`],
//!   [`router`], [`upstream`] and the rest of the request path;
//! - the control plane (`wasmgate-control`): [`gateway`], [`live`],
//!   [`store`], [`watch`], [`admin`].
//!
//! Start here: [`config::Config::load`] → [`Gateway::build`] → [`Gateway::start`].

pub mod cli;
pub mod filter_test;
pub mod toolkit;

pub use wasmgate_config as config;
pub use wasmgate_engine as filter;
pub use wasmgate_metrics as metrics;

pub use wasmgate_proxy::{
    access_log, body, canary, chain, error, forwarding, idle, normalize, outbound, overload, proxy,
    proxy_protocol, router, server, tls, upstream, workers,
};

pub use wasmgate_control::{admin, gateway, live, store, watch};

pub use wasmgate_control::{Gateway, RunningGateway};
