//! Test-only: the `contract-0-1-0` guest's behaviour, built against the
//! published 0.2.0 contract (`wit/0.2.0/filter.wit`) without the SDK, so
//! that one route can run a 0.1 build and a 0.2 build of the same filter
//! side by side, and a 0.2.0 build runs on a host of a later 0.2.x.
//!
//! Its config (JSON) names the header prefix it uses (default
//! `x-contract`), which phases it declares (default both), whether to echo
//! the request id it read into `<prefix>-request-id` (`"echo": "id"`), and
//! optionally a `mode` that breaks a rule of the contract:
//! `edit-request-on-response` edits the request in `on-response`, where it
//! has gone upstream. It marks the
//! request with `<prefix>-request: 0.2.0` and its request id (read on
//! demand), carries its version in its context, and marks the response
//! with `<prefix>: 0.2.0` and the context it got back. With an
//! `x-contract-key` header, it also sets `<prefix>-key-seen` to its value.
//! It is the 0.2 side of the filter-call benchmark
//! (`tests/benches/filter_call.rs`).

wit_bindgen::generate!({
    path: "../../../wit/0.2.0/filter.wit",
    world: "plugin",
});

use std::cell::RefCell;

use exports::wasmgate::filter::filter::Guest;
use wasmgate::filter::log::log;
use wasmgate::filter::types::{
    LogLevel, Request, RequestDecision, Response, ResponseDecision, Setup,
};

const VERSION: &str = "0.2.0";

thread_local! {
    static PREFIX: RefCell<String> = RefCell::new("x-contract".to_owned());
    static MODE: RefCell<String> = const { RefCell::new(String::new()) };
    static ECHO_ID: RefCell<bool> = const { RefCell::new(false) };
}

fn prefix() -> String {
    PREFIX.with_borrow(Clone::clone)
}

/// `"key":"value"` from a flat JSON object, without a JSON parser.
fn field<'a>(config: &'a str, key: &str) -> Option<&'a str> {
    let at = config.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = config[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    rest.split('"').next()
}

struct Contract020;

impl Guest for Contract020 {
    fn init(config: String, setup: &Setup) -> Result<(), String> {
        if let Some(p) = field(&config, "prefix") {
            PREFIX.with_borrow_mut(|slot| *slot = p.to_owned());
        }
        if field(&config, "echo") == Some("id") {
            ECHO_ID.with_borrow_mut(|slot| *slot = true);
        }
        if let Some(m) = field(&config, "mode") {
            MODE.with_borrow_mut(|slot| *slot = m.to_owned());
        }
        let phases = field(&config, "phases").unwrap_or("request,response");
        for phase in phases.split(',') {
            match phase {
                "request" => setup.on_request(),
                "response" => setup.on_response(),
                "" => {}
                other => return Err(format!("unknown phase {other:?}")),
            }
        }
        Ok(())
    }

    fn on_request(req: &Request) -> RequestDecision {
        let id = req.id();
        log(
            LogLevel::Info,
            &format!("contract {VERSION} guest saw {id}"),
        );
        let p = prefix();
        req.set_header(&format!("{p}-request"), VERSION);
        if ECHO_ID.with_borrow(|echo| *echo) {
            req.set_header(&format!("{p}-request-id"), &id);
        }
        if let Some(key) = req.header("x-contract-key").into_iter().next() {
            req.set_header(&format!("{p}-key-seen"), &key);
        }
        // The context is the version, and what `x-contract-context-extra`
        // adds (a filter-made value other parts of the gateway may key on).
        match req.header("x-contract-context-extra").into_iter().next() {
            Some(extra) => req.set_context(format!("{VERSION}:{extra}").as_bytes()),
            None => req.set_context(VERSION.as_bytes()),
        }
        RequestDecision::Proceed
    }

    fn on_response(req: &Request, resp: &Response) -> ResponseDecision {
        let p = prefix();
        let context = req
            .context()
            .map_or("none".into(), |c| String::from_utf8_lossy(&c).into_owned());
        resp.set_header(&p, VERSION);
        resp.set_header(&format!("{p}-context"), &context);
        if MODE.with_borrow(|m| m == "edit-request-on-response") {
            req.set_header("x-too-late", "1");
        }
        ResponseDecision::Proceed
    }
}

export!(Contract020);
