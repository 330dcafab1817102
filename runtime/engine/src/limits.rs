//! What bounds a filter and what is counted of it: the per-component slot
//! maxima and the load-time check that a component fits them and its memory
//! cap ([`fits`]); how many versions and instances of each filter are alive
//! ([`LiveCounts`]), with its log budget; and what its limits refused
//! ([`LimitCounts`], exported at scrape as `wasmgate_filter_refusals_total`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Linear memories one filter component may have.
pub const MAX_MEMORIES: u32 = 4;
/// Core instances one filter component may have.
pub const MAX_CORE_INSTANCES: u32 = 32;
/// Tables one filter component may have.
pub const MAX_TABLES: u32 = 32;

/// Whether one instance of `component` can exist within the engine's
/// per-component slots and a `memory` cap: what it needs at start is known
/// from the component itself, so one that can never run is refused at load.
pub(crate) fn fits(component: &wasmtime::component::Component, memory: u64) -> Result<(), String> {
    let Some(r) = component.resources_required() else {
        return Ok(());
    };
    if r.num_memories > MAX_MEMORIES {
        return Err(format!(
            "has {} linear memories; a filter may have at most {MAX_MEMORIES}",
            r.num_memories
        ));
    }
    if r.num_tables > MAX_TABLES {
        return Err(format!(
            "has {} tables; a filter may have at most {MAX_TABLES}",
            r.num_tables
        ));
    }
    let initial = r.max_initial_memory_size.unwrap_or(0).saturating_mul(65536);
    if initial > memory {
        return Err(format!(
            "needs {} MiB of memory to start, more than its memory_limit of {} MiB",
            initial.div_ceil(1 << 20),
            memory >> 20
        ));
    }
    Ok(())
}

/// Refuses a component that instantiates more core modules than a slot
/// holds ([`MAX_CORE_INSTANCES`]), before it is compiled.
pub(crate) fn check_core_instances(bytes: &[u8]) -> Result<(), String> {
    // Bytes that do not parse are the compiler's to refuse, with its
    // reason: this check is only about size.
    let Ok(instances) = core_instances(bytes) else {
        return Ok(());
    };
    if instances > MAX_CORE_INSTANCES {
        return Err(format!(
            "instantiates {instances} core modules; a filter may have at most \
             {MAX_CORE_INSTANCES} core instances"
        ));
    }
    Ok(())
}

/// The core module instances a component makes, as written: each `core
/// instance (instantiate …)` in it and in the components nested in it
/// (wasmtime counts again at instantiation, where a nested component
/// instantiated twice counts twice).
pub fn core_instances(bytes: &[u8]) -> Result<u32, String> {
    let mut n = 0u32;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("cannot be read: {e}"))?;
        if let wasmparser::Payload::InstanceSection(section) = payload {
            for instance in section {
                let instance = instance.map_err(|e| format!("cannot be read: {e}"))?;
                if matches!(instance, wasmparser::Instance::Instantiate { .. }) {
                    n = n.saturating_add(1);
                }
            }
        }
    }
    Ok(n)
}

/// How many versions (loaded modules) and instances of one filter name are
/// alive: an old version is freed once no request, pool or config uses it,
/// and these say whether that happened.
#[derive(Debug, Default)]
pub struct LiveCounts {
    /// `FilterModule`s alive.
    pub versions: std::sync::atomic::AtomicI64,
    /// `FilterInstance`s alive (idle in a pool or serving a call).
    pub instances: std::sync::atomic::AtomicI64,
    /// The filter's log lines (the `log` import, stdout and stderr), shared
    /// by every version and instance of it.
    pub log: Arc<crate::host::LogBudget>,
    /// What its limits refused.
    pub refused: Arc<LimitCounts>,
}

/// What a filter's limits refused so far (exported at scrape as
/// `wasmgate_filter_refusals_total`).
#[derive(Debug, Default)]
pub struct LimitCounts {
    /// New rate-limit keys refused past `rate_limit_keys`.
    pub rate_limit_keys: std::sync::atomic::AtomicU64,
    /// Request header reads refused (`read_request_headers`).
    pub read_request_headers: std::sync::atomic::AtomicU64,
    /// Response header reads refused (`read_response_headers`).
    pub read_response_headers: std::sync::atomic::AtomicU64,
    /// Decisions refused for a request header edit (`write_request_headers`).
    pub write_request_headers: std::sync::atomic::AtomicU64,
    /// Decisions refused for a response header edit (`write_response_headers`).
    pub write_response_headers: std::sync::atomic::AtomicU64,
    /// Decisions refused for handing back more than the host keeps (edits,
    /// responses built, context, header bytes, body).
    pub decision_size: std::sync::atomic::AtomicU64,
}

impl LimitCounts {
    /// Each count with the config key of the limit that refused it.
    pub fn all(&self) -> [(&'static str, u64); 6] {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        [
            ("rate_limit_keys", get(&self.rate_limit_keys)),
            ("read_request_headers", get(&self.read_request_headers)),
            ("read_response_headers", get(&self.read_response_headers)),
            ("write_request_headers", get(&self.write_request_headers)),
            ("write_response_headers", get(&self.write_response_headers)),
            ("decision_size", get(&self.decision_size)),
        ]
    }
}
