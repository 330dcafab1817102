//! The one place the host runs `bindgen!` over the WIT contract: once per
//! contract line it serves. `v0_2` binds the newest contract,
//! `wit/filter.wit`; `v0_1` binds the last 0.1 release, frozen in
//! `wit/0.1.1/`, so 0.1 guests keep running beside 0.2 guests (wasmtime
//! matches a guest built against any 0.1.x to it by semver, see
//! `wit/README.md`). Everything else in the host uses the re-exports below.

/// `wasmgate:filter@0.2.x`.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../../wit/filter.wit",
        world: "plugin",
        exports: { default: async },
        // Outbound calls await the network; everything else is synchronous.
        imports: {
            "wasmgate:filter/outbound.send": async,
            "wasmgate:filter/outbound.send-all": async,
        },
        with: {
            "wasmgate:filter/types.setup": crate::exchange::SetupHandle,
            "wasmgate:filter/types.request": crate::exchange::RequestHandle,
            "wasmgate:filter/types.response": crate::exchange::ResponseHandle,
        },
    });
}

/// `wasmgate:filter@0.1.x`, frozen.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.1/filter.wit",
        world: "plugin",
        exports: { default: async },
        imports: {
            "wasmgate:filter/outbound.send": async,
            "wasmgate:filter/outbound.send-all": async,
        },
    });
}

pub use self::v0_2::wasmgate::filter::outbound as wit_outbound;
pub use self::v0_2::wasmgate::filter::types as wit;
