//! Test-only: a filter as a guest built against `wasmgate:filter@0.1.0` is,
//! to prove the version policy's promise that today's host still runs it.
//!
//! It binds the frozen contract `wit/0.1.0/filter.wit` directly, not through
//! the SDK (which follows the newest contract), so every name it imports and
//! exports carries `@0.1.0`. It uses the one import 0.1.0 had (`log`), marks
//! the request with `x-contract-request: 0.1.0` (and, when the request has an
//! `x-contract-key` header, with `x-contract-key-seen: <its value>`), carries
//! its version in its context, and marks the response with `x-contract:
//! 0.1.0` and the context it got back. It is the 0.1 side of the filter-call
//! benchmark (`tests/benches/filter_call.rs`): a filter that reads one
//! header and the request id, and sets a header on each side.

wit_bindgen::generate!({
    path: "../../../wit/0.1.0/filter.wit",
    world: "plugin",
});

use exports::wasmgate::filter::filter::Guest;
use wasmgate::filter::log::log;
use wasmgate::filter::types::{
    FilterInfo, HeaderEdits, HeaderInterest, LogLevel, ProceedRequest, Request, RequestDecision,
    RequestEdits, Response, ResponseDecision, ResponseEdits,
};

const VERSION: &str = "0.1.0";

fn set(name: &str, value: &str) -> HeaderEdits {
    HeaderEdits {
        remove: Vec::new(),
        set: vec![(name.to_owned(), value.to_owned())],
        append: Vec::new(),
    }
}

struct Contract010;

impl Guest for Contract010 {
    fn init(_config: String) -> Result<FilterInfo, String> {
        Ok(FilterInfo {
            request_headers: HeaderInterest::Names(vec!["x-contract-key".to_owned()]),
            response_headers: HeaderInterest::None,
            buffer_request_body: false,
            buffer_response_body: false,
            wants_response: true,
        })
    }

    fn on_request(req: Request) -> RequestDecision {
        log(
            LogLevel::Info,
            &format!("contract {VERSION} guest saw {}", req.meta.request_id),
        );
        let mut headers = set("x-contract-request", VERSION);
        if let Some((_, key)) = req.headers.iter().find(|(n, _)| n == "x-contract-key") {
            headers
                .set
                .push(("x-contract-key-seen".to_owned(), key.clone()));
        }
        RequestDecision::Proceed(ProceedRequest {
            edits: RequestEdits {
                headers,
                method: None,
                path_with_query: None,
                cluster: None,
                body: None,
            },
            context: Some(VERSION.as_bytes().to_vec()),
        })
    }

    fn on_response(_req: Request, _resp: Response, context: Option<Vec<u8>>) -> ResponseDecision {
        let mut headers = set("x-contract", VERSION);
        let context = context.map_or("none".into(), |c| String::from_utf8_lossy(&c).into_owned());
        headers.set.push(("x-contract-context".to_owned(), context));
        ResponseDecision::Proceed(ResponseEdits {
            headers,
            status: None,
            body: None,
        })
    }
}

export!(Contract010);
