//! A multi-megabyte build of the swap-test filter (see `../../versioned.rs`),
//! for the module swap benchmark (`bench/run.sh --mode H`). It tags responses
//! like `version-a` and `version-b`, with its own letter (`x-version: ll`), and
//! embeds a 6 MiB table of pseudo-random bytes made by `build.rs`. Each
//! response reads one byte of it, at a position that moves with every call,
//! and carries it in `x-table-byte`, so the table is used at run time and the
//! compiler cannot drop it.

use std::cell::Cell;

use wasmgate_sdk::{
    Filter, FilterInfo, OnRequest, OnResponse, Request, RequestEdits, Response, ResponseEdits,
    export_filter,
};

const VERSION: &str = "l";

/// The table's size in bytes (`TABLE_SIZE` in `build.rs`).
const TABLE_SIZE: usize = 6 << 20;

static TABLE: &[u8; TABLE_SIZE] = include_bytes!(concat!(env!("OUT_DIR"), "/table.bin"));

/// Added to the position after each read: odd, so every byte is reached.
const STRIDE: usize = 1_000_003;

struct Large {
    next: Cell<usize>,
}

impl Filter for Large {
    fn new(_config: &str) -> Result<Self, String> {
        Ok(Large { next: Cell::new(0) })
    }

    fn info(&self) -> FilterInfo {
        FilterInfo::new().wants_response(true)
    }

    fn on_request(&self, _req: &Request) -> OnRequest {
        OnRequest::proceed_with(
            RequestEdits::default()
                .set_header("x-version", VERSION)
                .context(VERSION.as_bytes().to_vec()),
        )
    }

    fn on_response(&self, _req: &Request, _resp: &Response, context: Option<&[u8]>) -> OnResponse {
        let at_request = context.map_or("none".into(), |c| String::from_utf8_lossy(c).into_owned());
        let at = self.next.get();
        self.next.set((at + STRIDE) % TABLE_SIZE);
        OnResponse::proceed_with(
            ResponseEdits::default()
                .set_header("x-version", format!("{at_request}{VERSION}"))
                .set_header("x-table-byte", format!("{:02x}", TABLE[at])),
        )
    }
}

export_filter!(Large);
