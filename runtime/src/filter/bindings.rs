//! The one place the host runs `bindgen!` over the WIT contract in `wit/`.
//! Everything else in the host uses the re-exports below.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    exports: { default: async },
});

pub use self::wasmgate::filter::types as wit;
