//! # wasmgate-sdk: write wasmgate filters in Rust
//!
//! A wasmgate filter is a WebAssembly component that the gateway runs for every
//! request on the routes that list it. This crate hides the generated WIT bindings
//! behind a small API: implement [`Filter`] (every phase has a no-op default),
//! then export it with [`export_filter!`]. Build with
//! `cargo build --target wasm32-wasip2 --release`.
//!
//! ```no_run
//! use wasmgate_sdk::{export_filter, Filter, FilterInfo, OnRequest, Request, Response};
//!
//! struct RequireTenant;
//!
//! impl Filter for RequireTenant {
//!     fn new(_config: &str) -> Result<Self, String> {
//!         Ok(RequireTenant)
//!     }
//!
//!     fn info(&self) -> FilterInfo {
//!         // The host copies only the headers a filter names here.
//!         FilterInfo::new().request_headers(["x-tenant"])
//!     }
//!
//!     fn on_request(&self, req: &Request) -> OnRequest {
//!         match req.header("x-tenant") {
//!             Some(_) => OnRequest::proceed(),
//!             None => OnRequest::respond(Response::new(400).text("x-tenant is required")),
//!         }
//!     }
//! }
//!
//! export_filter!(RequireTenant);
//! ```
//!
//! ## Lifecycle
//! The gateway creates instances of a filter as it needs them (possibly one per
//! request) and calls [`Filter::new`] once per instance with the route's config, so
//! `new` must be deterministic for a given config. Per-request state that
//! [`Filter::on_response`] needs travels in the context bytes set with
//! [`RequestEdits::context`], because the instance that runs `on_response` may not
//! be the one that ran `on_request`.
//!
//! An instance is reused: by default (`isolation = "pooled"`) one instance
//! serves up to `max_uses` requests (10,000), one at a time, from any
//! client. Whatever it keeps between calls (a `static`, a cache in `self`
//! behind a `RefCell`, memory a previous request left behind) is there for
//! the next request, which may come from someone else. Do not keep one
//! request's data where another can read it; where a mistake would leak one
//! client's data to another (a filter that handles credentials or personal
//! data and keeps state), ask the operator for `isolation = "fresh"`: a new
//! instance for every call, at 60–90 µs more per call.
//!
//! ## What a filter costs
//! The SDK binds contract 0.2 (`wit/filter.wit`): the host calls a filter only
//! for the phases its [`FilterInfo`] asks for (the request phase unless
//! [`FilterInfo::wants_request`] turns it off; the response phase only with
//! [`FilterInfo::wants_response`] or response headers), and a [`Request`]
//! fetches each part from the host the first time it is read. The headers a
//! filter names in [`FilterInfo::request_headers`] are fetched together, once,
//! on the first header read; [`Request::fetch_header`] asks for any other.
//!
//! ## Sandbox
//! A filter has no files, no environment, no network. Standard output and
//! standard error go to the gateway log under the filter's name; [`log`] writes
//! leveled entries there. Clocks and randomness work as usual.
#![deny(missing_docs)]

extern crate self as wasmgate_sdk;

mod http;
pub mod log;
mod state;
pub use state::{cache, config, crypto, kv, metrics, outbound, rate_limit};

pub use http::{
    FilterInfo, HeaderInterest, OnRequest, OnResponse, Request, RequestEdits, RequestMeta,
    Response, ResponseEdits,
};

/// Generated bindings and glue used by [`export_filter!`]. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub mod bindings {
        // The newest contract; never the frozen versions in `wit/<version>/`.
        wit_bindgen::generate!({
            path: "../wit/filter.wit",
            world: "plugin",
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "wasmgate_sdk::__private::bindings",
            runtime_path: "wasmgate_sdk::__private::wit_bindgen_rt",
        });
    }
    pub use crate::http::glue;
    pub use wit_bindgen::rt as wit_bindgen_rt;
}

/// A filter: one value per instance, created by [`Filter::new`] from the route's
/// config. Every phase has a default that lets the exchange pass unchanged.
pub trait Filter: Sized + 'static {
    /// Builds the filter from its config: the route's `config` table as JSON text
    /// (`"{}"` when the route gives none). Return `Err` with a message that names
    /// the problem to reject the config; the gateway shows it at load.
    fn new(config: &str) -> Result<Self, String>;

    /// What the filter needs from the host: which headers to copy into each
    /// call, and whether to call [`Filter::on_response`]. The default reads no
    /// headers and skips the response phase.
    fn info(&self) -> FilterInfo {
        FilterInfo::new()
    }

    /// Runs before the request goes upstream, unless [`FilterInfo::wants_request`]
    /// turned the request phase off. The default proceeds unchanged.
    fn on_request(&self, req: &Request<'_>) -> OnRequest {
        let _ = req;
        OnRequest::proceed()
    }

    /// Runs on the way back (in reverse filter order), only when
    /// [`FilterInfo::wants_response`] is set. `req` is the request as forwarded.
    /// The default proceeds unchanged.
    fn on_response(
        &self,
        req: &Request<'_>,
        resp: &Response,
        context: Option<&[u8]>,
    ) -> OnResponse {
        let _ = (req, resp, context);
        OnResponse::proceed()
    }
}

/// Whether the host manages header `name` (lower-case): message framing and
/// per-connection headers. A filter's edit to one fails the request, so a
/// filter config that would make such edits is best refused at `init`.
pub fn is_managed_header(name: &str) -> bool {
    matches!(
        name,
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// Parses a JSON config into a typed value, with an error message that names the
/// problem (field and position), ready to return from [`Filter::new`].
///
/// ```no_run
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Config { header: String }
///
/// let config: Config = wasmgate_sdk::parse_config(r#"{"header":"x-api-key"}"#)?;
/// # Ok::<(), String>(())
/// ```
#[cfg(feature = "json")]
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, String> {
    serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))
}

/// Exports a [`Filter`] implementation as the component's `wasmgate:filter/filter`
/// interface. Use it once per filter crate, at the top level.
#[macro_export]
macro_rules! export_filter {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __WASMGATE_FILTER: ::std::cell::RefCell<::std::option::Option<($ty, $crate::__private::glue::Declared)>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct __WasmgateExport;

            impl $crate::__private::bindings::exports::wasmgate::filter::filter::Guest
                for __WasmgateExport
            {
                fn init(
                    config: ::std::string::String,
                    setup: &$crate::__private::bindings::wasmgate::filter::types::Setup,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    let filter = <$ty as $crate::Filter>::new(&config)?;
                    let declared = $crate::__private::glue::declare(&filter, setup);
                    __WASMGATE_FILTER.with_borrow_mut(|slot| *slot = ::std::option::Option::Some((filter, declared)));
                    ::std::result::Result::Ok(())
                }

                fn on_request(
                    req: &$crate::__private::bindings::wasmgate::filter::types::Request,
                ) -> $crate::__private::bindings::wasmgate::filter::types::RequestDecision {
                    __WASMGATE_FILTER.with_borrow(|slot| {
                        let (filter, declared) = slot.as_ref().expect("wasmgate called on-request before init");
                        $crate::__private::glue::on_request(filter, declared, req)
                    })
                }

                fn on_response(
                    req: &$crate::__private::bindings::wasmgate::filter::types::Request,
                    resp: &$crate::__private::bindings::wasmgate::filter::types::Response,
                ) -> $crate::__private::bindings::wasmgate::filter::types::ResponseDecision {
                    __WASMGATE_FILTER.with_borrow(|slot| {
                        let (filter, declared) = slot.as_ref().expect("wasmgate called on-response before init");
                        $crate::__private::glue::on_response(filter, declared, req, resp)
                    })
                }
            }

            $crate::__private::bindings::export!(__WasmgateExport with_types_in $crate::__private::bindings);
        };
    };
}
