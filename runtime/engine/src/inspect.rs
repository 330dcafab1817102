//! What a component is, read without running it: the contract it targets,
//! what it imports and exports, its size and memories. `wasmgate filter
//! inspect` prints it, beside whether this gateway loads the component and
//! what the filter declares at `init` (which needs a load and a probe).

use wasmtime::component::Component;

use crate::cache::sha256_hex;
use crate::{FilterEngine, LoadError, check_component_header};

/// A component as it is, before the gateway loads it.
#[derive(Debug, Clone)]
pub struct ComponentSummary {
    /// Its size in bytes.
    pub size: usize,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// The `wasmgate:filter` contract version its `filter` export names
    /// (`0.2.0`, `0.1.1`, …), if it has one.
    pub contract: Option<String>,
    /// What it imports (instances and functions), by name.
    pub imports: Vec<String>,
    /// What it exports, by name.
    pub exports: Vec<String>,
    /// Linear memories its instances have.
    pub memories: u32,
    /// The largest initial size among them, in bytes.
    pub initial_memory: u64,
    /// Tables its instances have.
    pub tables: u32,
    /// Core module instances it makes (see [`crate::limits::core_instances`]).
    pub core_instances: u32,
}

/// Whether an import names something this host provides: the contract's
/// interfaces of a line it serves (0.1, 0.2), and WASI 0.2.
pub fn host_provides(import: &str) -> bool {
    let Some((package, version)) = import.rsplit_once('@') else {
        return false;
    };
    if let Some(interface) = package.strip_prefix("wasmgate:filter/") {
        let known_02 = [
            "types",
            "log",
            "kv",
            "rate-limit",
            "config",
            "metrics",
            "outbound",
            "crypto",
            "cache",
        ];
        let known_01 = &known_02[..8];
        let mut v = version.split('.');
        return match (v.next(), v.next()) {
            (Some("0"), Some("2")) => known_02.contains(&interface),
            (Some("0"), Some("1")) => known_01.contains(&interface),
            _ => false,
        };
    }
    // WASI 0.2's command-line world (files, sockets and the environment
    // are there but empty: the sandbox grants none); not wasi:http.
    package.starts_with("wasi:")
        && !package.starts_with("wasi:http/")
        && version.starts_with("0.2.")
}

impl FilterEngine {
    /// Reads what `bytes` is as a component (compiling it, or taking it
    /// from the compile cache; nothing is instantiated).
    pub fn summarize(&self, origin: &str, bytes: &[u8]) -> Result<ComponentSummary, LoadError> {
        let not_component = |reason: String| LoadError::NotAComponent {
            path: origin.to_owned(),
            reason,
        };
        check_component_header(bytes).map_err(not_component)?;
        // Through the compile cache, as a load: an interpreter-carrying
        // component takes seconds to compile, and is then compiled once.
        let sha256 = sha256_hex(bytes);
        let compiled = match &self.cache {
            Some(cache) => cache
                .load_or_compile(&self.engine, bytes, &sha256)
                .map(|(c, _)| c),
            None => crate::cache::compile(&self.engine, bytes),
        };
        let component: Component = compiled.map_err(|e| crate::compile_error(origin, &e))?;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let contract = exports
            .iter()
            .find_map(|e| e.strip_prefix("wasmgate:filter/filter@").map(str::to_owned));
        let r = component.resources_required();
        Ok(ComponentSummary {
            size: bytes.len(),
            sha256,
            contract,
            imports,
            exports,
            memories: r.as_ref().map_or(0, |r| r.num_memories),
            initial_memory: r
                .as_ref()
                .and_then(|r| r.max_initial_memory_size)
                .unwrap_or(0)
                .saturating_mul(65536),
            tables: r.as_ref().map_or(0, |r| r.num_tables),
            core_instances: crate::limits::core_instances(bytes).map_err(not_component)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::host_provides;

    #[test]
    fn the_host_provides_its_contract_lines_and_wasi_0_2() {
        assert!(host_provides("wasmgate:filter/kv@0.2.0"));
        assert!(host_provides("wasmgate:filter/cache@0.2.1"));
        assert!(host_provides("wasmgate:filter/log@0.1.0"));
        assert!(!host_provides("wasmgate:filter/cache@0.1.1"));
        assert!(!host_provides("wasmgate:filter/clock@0.2.3"));
        assert!(!host_provides("wasmgate:filter/kv@0.3.0"));
        assert!(host_provides("wasi:io/streams@0.2.3"));
        assert!(!host_provides("wasi:http/outgoing-handler@0.2.0"));
        assert!(!host_provides("acme:thing/x@1.0.0"));
    }
}
