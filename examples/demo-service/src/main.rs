//! The e-commerce demo's upstream service. One binary plays every service of the
//! demo; start it once per instance with a name and a port:
//!
//! ```text
//! demo-service --name search-1 --port 9101
//! ```
//! The part of the name before the last `-` is the service (`search`, `cart`);
//! every response says which instance answered, so round robin is visible.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(about = "A demo upstream service for wasmgate")]
struct Args {
    /// Instance name, e.g. `search-1`; the service is the part before the last '-'.
    #[arg(long)]
    name: String,
    /// Port to listen on (127.0.0.1).
    #[arg(long)]
    port: u16,
}

fn answer(name: &str, req: &Request<hyper::body::Incoming>) -> serde_json::Value {
    let service = name.rsplit_once('-').map_or(name, |(s, _)| s);
    let query = req.uri().query().unwrap_or("");
    let q = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("q="))
        .unwrap_or("")
        .to_owned();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-"))
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let data = match service {
        "search" => json!({
            "query": q,
            "results": [
                {"sku": "SHOE-001", "name": format!("Trail runner ({q})"), "price": 89.0},
                {"sku": "SHOE-002", "name": format!("Road racer ({q})"), "price": 119.0},
            ],
        }),
        "cart" => json!({
            "items": [{"sku": "SHOE-001", "qty": 1}],
            "total": 89.0,
        }),
        _ => json!({}),
    };
    json!({
        "service": service,
        "instance": name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "headers": headers,
        "data": data,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = TcpListener::bind(addr).await?;
    println!("{} listening on http://{addr}", args.name);
    let name: Arc<str> = Arc::from(args.name);
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = answer(&name, &req).to_string();
                // Search results may be cached for a few seconds (the
                // gateway's search route caches them).
                let cacheable = name.rsplit_once('-').map_or(&*name, |(s, _)| s) == "search";
                async move {
                    let mut resp = Response::new(Full::new(Bytes::from(body + "\n")));
                    resp.headers_mut().insert(
                        "content-type",
                        "application/json"
                            .parse()
                            .unwrap_or_else(|_| unreachable!()),
                    );
                    if cacheable {
                        resp.headers_mut().insert(
                            "cache-control",
                            "public, max-age=10"
                                .parse()
                                .unwrap_or_else(|_| unreachable!()),
                        );
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
