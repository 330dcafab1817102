//! wasmgate's data plane: everything a request meets between the socket and
//! the upstream. Listeners ([`server`]), the request path ([`request`], over
//! a generation: [`proxy`]; its routes: [`route`]), filter
//! chains ([`chain`], over the filter engine), routing ([`router`]),
//! forwarding headers ([`forwarding`]), upstream clusters ([`upstream`]), TLS
//! ([`tls`]), protocol translation ([`translation`]: JSON and gRPC-Web to
//! gRPC), the overload guard ([`overload`]) and the access log.
//!
//! It depends on the configuration ([`wasmgate_config`]), the metrics
//! registry and the filter engine, never on the control plane: a
//! generation ([`proxy::Proxy`]) is built by the control plane and handed to
//! the server through a [`proxy::Current`] slot, which is all the data plane
//! knows about how generations change.

pub mod access_log;
pub mod body;
pub mod canary;
pub mod chain;
pub mod error;
pub mod forwarding;
pub mod idle;
pub mod normalize;
pub mod outbound;
pub mod overload;
pub mod proxy;
pub mod proxy_protocol;
pub mod request;
pub mod response_cache;
pub mod route;
pub mod router;
pub mod server;
pub mod stall;
pub mod tls;
pub mod translation;
pub mod upstream;
pub mod workers;
