//! {{name}}: a wasmgate filter. It declares the request phase, and adds
//! `x-{{name}}: <greeting>` to every request it passes on (config:
//! `{"greeting": "…"}`, default "hello").
//!
//! Build: `cargo build --release --target wasm32-wasip2`; the filter is
//! `target/wasm32-wasip2/release/{{crate}}.wasm`.

wit_bindgen::generate!({
    path: "wit",
    world: "plugin",
});

use std::cell::RefCell;

use exports::wasmgate::filter::filter::Guest;
use wasmgate::filter::types::{Request, RequestDecision, Response, ResponseDecision, Setup};

thread_local! {
    static GREETING: RefCell<String> = RefCell::new("hello".to_owned());
}

struct Filter;

impl Guest for Filter {
    fn init(config: String, setup: &Setup) -> Result<(), String> {
        // A real filter parses its config with serde_json; this one reads
        // one string field by hand to need no other crate.
        if let Some(at) = config.find("\"greeting\"") {
            let rest = config[at + 10..].trim_start().strip_prefix(':').unwrap_or("");
            let value = rest
                .trim_start()
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
                .ok_or("`greeting` must be a string")?;
            GREETING.with_borrow_mut(|g| *g = value.to_owned());
        }
        setup.on_request();
        Ok(())
    }

    fn on_request(req: &Request) -> RequestDecision {
        GREETING.with_borrow(|g| req.set_header("x-{{name}}", g));
        RequestDecision::Proceed
    }

    fn on_response(_req: &Request, _resp: &Response) -> ResponseDecision {
        ResponseDecision::Proceed
    }
}

export!(Filter);
