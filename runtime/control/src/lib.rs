//! wasmgate's control plane: how a running gateway changes. It builds
//! generations of the data plane from a config and the filter store
//! ([`live`]), keeps that store and the config across restarts ([`store`]),
//! follows watched files ([`watch`]), keeps the descriptor sets transcoding
//! routes use ([`descriptors`]), serves the management API ([`admin`]),
//! and assembles a gateway ([`gateway`]).
//!
//! It depends on everything below it (the configuration, the filter engine,
//! the data plane); nothing there names it.

pub mod admin;
pub mod build;
pub mod descriptors;
pub mod gateway;
pub mod live;
pub mod store;
pub mod tenant_admin;
pub mod tokens;
pub mod versions;
pub mod watch;

pub use gateway::{Gateway, RunningGateway};
