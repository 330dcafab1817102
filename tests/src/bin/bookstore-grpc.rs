//! The test gRPC upstream (`src/grpc`, the `bookstore.v1` services on
//! tonic) as a process, for the protocol-translation benchmark
//! (`bench/grpc.py`): `bookstore-grpc 127.0.0.1:PORT [DESCRIPTOR_OUT]`
//! serves until killed; with `DESCRIPTOR_OUT` it first writes the
//! descriptor set the gateway and Envoy transcode with.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next().and_then(|a| a.parse().ok()) else {
        eprintln!("usage: bookstore-grpc 127.0.0.1:PORT [DESCRIPTOR_OUT]");
        std::process::exit(2);
    };
    if let Some(out) = args.next() {
        std::fs::write(&out, wasmgate_tests::grpc::DESCRIPTOR_SET)
            .unwrap_or_else(|e| panic!("cannot write {out}: {e}"));
    }
    let bound = wasmgate_tests::grpc::server::spawn_on(addr).await;
    println!("listening on {bound}");
    std::future::pending::<()>().await;
}
