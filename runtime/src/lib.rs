//! wasmgate: a WebAssembly-extensible API gateway and reverse proxy.
//!
//! The library behind the `wasmgate` binary. See `ARCHITECTURE.md` for the map.
//! Start here: [`config::Config::load`] → [`Gateway::build`] → [`Gateway::start`].

pub mod access_log;
pub mod admin;
pub mod body;
pub mod canary;
pub mod chain;
pub mod cli;
pub mod config;
pub mod error;
pub mod filter;
pub mod filter_metrics;
pub mod forwarding;
pub mod gateway;
pub mod idle;
pub mod live;
pub mod metrics;
pub mod normalize;
pub mod outbound;
pub mod overload;
pub mod proxy;
pub mod proxy_protocol;
pub mod route_config;
pub mod router;
pub mod server;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod watch;

pub use gateway::{Gateway, RunningGateway};
