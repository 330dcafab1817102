//! End-to-end tests: the real gateway on `127.0.0.1:0`, real upstream servers,
//! real WASM filter components built from `filters/`.
//!
//! One test binary (see CONVENTIONS: one integration-test crate), one module
//! per area.

mod access_log;
mod admin;
mod balancing;
mod cache;
mod canary;
mod cli;
mod config;
mod contract;
mod drain;
mod edge;
mod faults;
mod filter_test;
mod filters;
mod hostile;
mod hygiene;
mod languages;
mod limits;
mod live;
mod pool;
mod protocols;
mod quotas;
mod response_cache;
mod routing;
mod services;
mod tenants;
mod tls;
mod transcode;
mod translation;
mod upstream_faults;
mod upstream_health;
mod watch;
mod workers;

use wasmgate_tests::artifacts;

/// `[engine]` and `[filters.*]` sections with every guest, for test configs.
/// Small pool: each engine reserves virtual memory per slot.
pub fn filters_toml() -> String {
    format!(
        r#"
[access_log]
enabled = false

[engine]
max_instances = 48

[filters.aggregate]
path = "{aggregate}"
pool_size = 2
wall_limit = "5s"
outbound_clusters = ["*"]

[filters.api-key]
path = "{api_key}"
pool_size = 4

[filters.headers]
path = "{headers}"
pool_size = 4

[filters.basic-auth]
path = "{basic_auth}"
pool_size = 2

[filters.cors]
path = "{cors}"
pool_size = 2

[filters.transform]
path = "{transform}"
pool_size = 2
[filters.jwt]
path = "{jwt}"
pool_size = 2

[filters.fault]
path = "{fault}"
memory_limit = "16MiB"
cpu_limit = "50ms"
pool_size = 4
"#,
        aggregate = artifacts::AGGREGATE,
        api_key = artifacts::API_KEY,
        headers = artifacts::HEADERS,
        fault = artifacts::FAULT,
        basic_auth = artifacts::BASIC_AUTH,
        cors = artifacts::CORS,
        transform = artifacts::TRANSFORM,
        jwt = artifacts::JWT,
    )
}

/// A config with one cluster `c` (the upstream `up`) and one route `r` to
/// it, every test filter defined: `server_extra` goes in `[server]`,
/// `route_extra` at the end of the route (keys or `[[routes.filters]]`).
pub fn one_route(up: &wasmgate_tests::Upstream, server_extra: &str, route_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n{}\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n{route_extra}",
        filters_toml(),
        up.addr
    )
}

/// Every first-party filter must have a module in `filters.rs` with a test
/// that runs it in the real host: a missing one is a compile error here.
macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports, reason = "the import itself is the check")]
        use crate::filters::$name::runs_in_the_real_host as _;
    };
}
wasmgate_tests::foreach_first_party_filter!(assert_test_exists);
