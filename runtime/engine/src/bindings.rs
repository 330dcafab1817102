//! The one place the host runs `bindgen!` over the WIT contract: the newest
//! version, `wit/filter.wit` (the frozen older versions in `wit/<version>/`
//! are not bound; wasmtime serves guests built against them by matching
//! semver-compatible names, see `wit/README.md`). Everything else in the host
//! uses the re-exports below.

wasmtime::component::bindgen!({
    path: "../../wit/filter.wit",
    world: "plugin",
    exports: { default: async },
    // Outbound calls await the network; everything else is synchronous.
    imports: {
        "wasmgate:filter/outbound.send": async,
        "wasmgate:filter/outbound.send-all": async,
    },
});

pub use self::wasmgate::filter::outbound as wit_outbound;
pub use self::wasmgate::filter::types as wit;
