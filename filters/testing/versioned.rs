// The body of the `version-a` and `version-b` test filters: two builds of
// one filter that differ only in `VERSION`, for module swap tests. Each
// response says which version ran the request phase (carried in the
// context) and which ran the response phase: a request that ran on two
// versions would show two different letters. A request carrying
// `x-trap: <this build's letter>` makes that build trap, for canary
// rollback tests.

use wasmgate_sdk::{
    Filter, FilterInfo, OnRequest, OnResponse, Request, RequestEdits, Response, ResponseEdits,
    export_filter,
};

struct Versioned;

impl Filter for Versioned {
    fn new(_config: &str) -> Result<Self, String> {
        Ok(Versioned)
    }

    fn info(&self) -> FilterInfo {
        FilterInfo::new()
            .wants_response(true)
            .request_headers(["x-trap"])
    }

    fn on_request(&self, req: &Request) -> OnRequest {
        if req.header("x-trap") == Some(VERSION) {
            panic!("asked to trap by x-trap");
        }
        OnRequest::proceed_with(
            RequestEdits::default()
                .set_header("x-version", VERSION)
                .context(VERSION.as_bytes().to_vec()),
        )
    }

    fn on_response(&self, _req: &Request, _resp: &Response, context: Option<&[u8]>) -> OnResponse {
        let at_request = context.map_or("none".into(), |c| String::from_utf8_lossy(c).into_owned());
        OnResponse::proceed_with(
            ResponseEdits::default()
                .set_header("x-version", format!("{at_request}{VERSION}")),
        )
    }
}

export_filter!(Versioned);
