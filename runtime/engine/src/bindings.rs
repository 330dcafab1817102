//! The one place the host runs `bindgen!` over the WIT contract in `wit/`.
//! Everything else in the host uses the re-exports below.

wasmtime::component::bindgen!({
    path: "../../wit",
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
