//! The host–guest boundary: one call of each phase, for a 0.1 guest and a
//! 0.2 guest of the same filter, with a typical request.
//!
//! `contract-0-1-0` (built from the frozen 0.1.0 contract) and
//! `contract-0-2-0` (built from `wit/filter.wit`) do the same work: read one
//! request header and the request id, log a line, set request headers and a
//! context; on the way back, read the context and set two response headers.
//! The request carries 14 headers, as a browser's request through a CDN
//! does. What the two rows differ by is what the contract makes the host
//! and the guest do around the same work: 0.1 copies the request line, the
//! facts and the declared headers into records on every call and reads the
//! edits back as records; 0.2 moves the request into the store and the
//! guest reads what it uses through methods.
//!
//! Run with `cargo bench -p wasmgate-tests --bench filter_call` (after a
//! `cargo build`, which builds the guests). Results are in BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use wasmgate::config::{EngineConfig, Scoped};
use wasmgate::filter::exchange::{ClientAddr, Exchange, Facts, FilterCarry};
use wasmgate::filter::{FilterEngine, FilterInstance, FilterLimits};
use wasmgate_tests::artifacts;

/// A GET as a browser sends it through a CDN: 14 headers, one of them the
/// one the filter reads.
fn request() -> http::request::Parts {
    let (parts, ()) = http::Request::builder()
        .method("GET")
        .uri("/api/search?q=shoes&page=2")
        .header("host", "shop.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .header("accept-language", "en-GB,en;q=0.5")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("referer", "https://shop.example.com/")
        .header("cookie", "session=2f9c1e0a7b; theme=dark; consent=1")
        .header("x-contract-key", "demo-key-123")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("sec-fetch-mode", "navigate")
        .header("upgrade-insecure-requests", "1")
        .body(())
        .unwrap()
        .into_parts();
    parts
}

fn response() -> http::response::Parts {
    let (parts, ()) = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("content-length", "512")
        .header("cache-control", "private, max-age=0")
        .header("date", "Mon, 07 Dec 2026 00:00:00 GMT")
        .header("server", "upstream")
        .body(())
        .unwrap()
        .into_parts();
    parts
}

fn exchange() -> Exchange {
    let facts = Facts {
        request_id: HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"),
        route: Arc::from("search"),
        scheme: "https",
        client: ClientAddr::Peer("203.0.113.7:50123".parse().unwrap()),
        tls: true,
        received_at_ms: 1_796_601_600_000,
    };
    Exchange::new(Arc::new(facts), request())
}

fn instance(rt: &tokio::runtime::Runtime, engine: &FilterEngine, path: &str) -> FilterInstance {
    let limits = FilterLimits {
        memory: 16 << 20,
        cpu: Duration::from_secs(1),
        wall: Duration::from_secs(10),
    };
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (build the guests first: `cargo build`)"));
    let module = engine
        .load_bytes(&Scoped::default_tenant("bench"), path, &bytes, limits)
        .expect("the guest loads");
    rt.block_on(module.instantiate(&Arc::from("search"), "{}"))
        .expect("the guest starts")
}

fn filter_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A pool just big enough for the two guests, so that the bench also
    // runs under valgrind (which cannot reserve the default pool).
    let engine = FilterEngine::new(&EngineConfig {
        max_instances: 2,
        max_memory: 16 << 20,
        ..EngineConfig::default()
    })
    .expect("an engine");
    // `isolation = "fresh"`: a new instance for the call, its `init`, the
    // call itself and the instance's end, as the pool does it.
    let fresh = {
        let path = artifacts::CONTRACT_0_2_0;
        let limits = FilterLimits {
            memory: 16 << 20,
            cpu: Duration::from_secs(1),
            wall: Duration::from_secs(10),
        };
        let bytes = std::fs::read(path).expect("the guest is built");
        engine
            .load_bytes(&Scoped::default_tenant("fresh"), path, &bytes, limits)
            .expect("the guest loads")
    };
    let route: Arc<str> = Arc::from("search");
    let mut ex = exchange();
    c.bench_function("fresh-on-request/0.2", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut guest = fresh.instantiate(&route, "{}").await.expect("starts");
                let far = tokio::time::Instant::now() + Duration::from_secs(10);
                let mut carry = FilterCarry::default();
                guest
                    .on_request(&mut ex, &mut carry, far)
                    .await
                    .expect("on-request")
            })
        })
    });

    for (line, path) in [
        ("0.1", artifacts::CONTRACT_0_1_0),
        ("0.2", artifacts::CONTRACT_0_2_0),
    ] {
        let mut guest = instance(&rt, &engine, path);
        let mut ex = exchange();
        let far = || tokio::time::Instant::now() + Duration::from_secs(10);

        // Each call's edits are returned, not applied, so `ex` stays the
        // same request for every iteration.
        c.bench_function(&format!("on-request/{line}"), |b| {
            b.iter(|| {
                let mut carry = FilterCarry::default();
                rt.block_on(guest.on_request(&mut ex, &mut carry, far()))
                    .expect("on-request")
            })
        });

        ex.request = request();
        ex.response = Some(response());
        c.bench_function(&format!("on-response/{line}"), |b| {
            b.iter(|| {
                let mut carry = FilterCarry {
                    context: Some(line.as_bytes().to_vec()),
                    outbound_used: 0,
                };
                rt.block_on(guest.on_response(&mut ex, &mut carry, far()))
                    .expect("on-response")
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = filter_call
}
criterion_main!(benches);
