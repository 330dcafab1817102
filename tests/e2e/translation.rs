//! Protocol translation through the gateway (issue 21): JSON/HTTP clients
//! and gRPC-Web clients reach a real tonic gRPC server (`src/grpc`) over an
//! h2c cluster. Transcoding with path and query binding, well-known types
//! and the unannotated `POST /package.Service/Method`; server streams
//! flushed message by message; every gRPC status mapped; bad bodies named
//! field by field; gRPC-Web binary and text with CORS; filters seeing JSON
//! both ways; descriptor sets swapped through the admin API.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use serde_json::{Value, json};
use wasmgate_tests::grpc::{DESCRIPTOR_SET, pb, server};
use wasmgate_tests::{build_gateway, get, send, send_body, start_gateway, within};
use wasmgate_transcode::frame::{FrameDecoder, encode_frame};
use wasmgate_transcode::grpc_web::{TextDecoder, decode_trailers, encode_text};

const TOKEN: &str = "test-admin-token-0123456789";

/// Writes `bytes` as a descriptor set file; returns its path.
fn descriptor_file(name: &str, bytes: &[u8]) -> String {
    let dir = wasmgate_tests::pki::dir(&format!("descriptors-{name}"));
    let path = dir.join("set.pb");
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

/// The gateway's config: cluster `grpc` (h2c, the tonic server), the
/// descriptor set `books` at `set`, and `routes`.
fn config(up: SocketAddr, set: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         {}\n\
         [clusters.grpc]\nprotocol = \"h2c\"\nendpoints = [\"{up}\"]\n\
         [descriptors.books]\npath = {set:?}\n{routes}",
        crate::filters_toml(),
    )
}

/// One transcoding route for everything, taking gRPC-Web too.
const ONE_ROUTE: &str = "[[routes]]\nname = \"books\"\ncluster = \"grpc\"\n\
                         transcode = { descriptor = \"books\" }\ngrpc_web = true\n";

async fn gateway(routes: &str) -> (wasmgate_tests::RunningGateway, SocketAddr) {
    let up = server::spawn().await;
    let set = descriptor_file("main", DESCRIPTOR_SET);
    (start_gateway(&config(up, &set, routes)).await, up)
}

/// A response with its body as bytes.
struct Raw {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Starts a request on a new HTTP/1.1 connection; returns the response
/// with its body unread.
async fn start(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> http::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req = req.header("host", "gateway.test");
    }
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    sender.send_request(req).await.unwrap()
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Raw {
    within(&format!("{method} {path}"), async {
        let resp = start(addr, method, path, headers, body).await;
        let (parts, body) = resp.into_parts();
        Raw {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    })
    .await
}

async fn json_call(addr: SocketAddr, method: &str, path: &str, body: &str) -> Raw {
    let headers: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[("content-type", "application/json")]
    };
    call(addr, method, path, headers, body.as_bytes()).await
}

#[tokio::test]
async fn json_round_trips_with_path_and_query_binding_and_well_known_types() {
    let (gw, _) = gateway(ONE_ROUTE).await;
    let a = gw.addr();
    // Path variables (a nested field, a 64-bit id past 2^53), query
    // parameters (a repeated enum by name, repeated ints, a bool, a
    // FieldMask, a Timestamp), and the answer's well-known types.
    let r = json_call(
        a,
        "GET",
        "/v1/shelves/7/books/9007199254740993?genres=SCIENCE&ids=1&ids=-2&includeMetadata=true\
         &readMask=title,authorName&asOf=2024-02-29T12:00:00.250Z",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({
            "id": "9007199254740993",
            "shelfId": "7",
            "title": "Dune",
            "genre": "SCIENCE",
            "publishTime": "2024-02-29T12:00:00.250Z",
            "readTime": "36000.500s",
            "rating": 5,
            "metadata": {"ids": ["1", "-2"], "include_metadata": true},
            "tags": ["title", "author_name"],
            "authorName": "Frank Herbert",
            "pageCount": "18446744073709551615",
        })
    );
    // The additional binding.
    let r = json_call(a, "GET", "/v1/books/5?note=hi", "").await;
    assert_eq!(
        (r.json()["id"].clone(), r.json()["title"].clone()),
        (json!("5"), json!("hi"))
    );

    // A body field (`body: "book"`), both lowerCamel and original names accepted.
    let r = json_call(
        a,
        "POST",
        "/v1/shelves/3/books?requestId=r-1",
        r#"{"title": "Emma", "publish_time": "1815-12-23T00:00:00Z", "readTime": "1.5s", "genre": "FICTION"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"shelfId": "3", "title": "Emma", "publishTime": "1815-12-23T00:00:00Z",
               "readTime": "1.500s", "genre": "FICTION", "tags": ["r-1"]})
    );
    // The whole body (`body: "*"`) with a path variable and a custom verb.
    let r = json_call(
        a,
        "POST",
        "/v1/shelves/1/books/2:publish",
        r#"{"printRun": "12", "genre": 1, "labels": {"a": [1, "x", null]}, "note": "n"}"#,
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"id": "12", "title": "shelves/1/books/2", "genre": "FICTION",
               "metadata": {"a": [1.0, "x", null]}, "tags": ["n"]})
    );
    // `response_body`: only the named field is the answer.
    let r = json_call(a, "GET", "/v1/shelves/5/books?pageSize=2", "").await;
    assert_eq!(
        r.json(),
        json!([
            {"id": "1", "shelfId": "5", "title": "Book 1", "genre": "SCIENCE"},
            {"id": "2", "shelfId": "5", "title": "Book 2", "genre": "SCIENCE"},
        ])
    );
    // google.protobuf.Empty both ways, on a custom HTTP method.
    let r = json_call(a, "HEAD", "/v1/health", "").await;
    assert_eq!(r.status, 200);

    // The unannotated service: POST /package.Service/Method, the whole body.
    let echo = json!({
        "big": "-9007199254740993", "ubig": "18446744073709551615", "ratio": 0.25,
        "blob": "AQID", "counts": {"a": "1"}, "text": "hi",
        "extra": {"k": [true, "v"]}, "flag": false,
    });
    let r = json_call(a, "POST", "/bookstore.v1.Admin/Echo", &echo.to_string()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), echo);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_request_is_a_400_that_names_the_field() {
    let strict_and_lenient = format!(
        "{ONE_ROUTE}[[routes]]\nname = \"lenient\"\nhosts = [\"lenient.test\"]\ncluster = \"grpc\"\n\
         transcode = {{ descriptor = \"books\", unknown_fields = \"ignore\" }}\n"
    );
    let (gw, _) = gateway(&strict_and_lenient).await;
    let a = gw.addr();
    for (path, body, code, field) in [
        (
            "/v1/shelves/3/books",
            r#"{"id": "abc"}"#,
            "invalid_field",
            "book.id",
        ),
        (
            "/v1/shelves/3/books",
            r#"{"publishTime": "yesterday"}"#,
            "invalid_field",
            "book.publishTime",
        ),
        (
            "/v1/shelves/3/books",
            r#"{"genre": "POETRY"}"#,
            "invalid_field",
            "book.genre",
        ),
        (
            "/v1/shelves/3/books",
            r#"{"rating": "five"}"#,
            "invalid_field",
            "book.rating",
        ),
        ("/v1/shelves/x/books", r#"{}"#, "invalid_field", "shelf"),
        (
            "/v1/shelves/3/books?requestId=1&colour=red",
            r#"{}"#,
            "unknown_query_parameter",
            "colour",
        ),
    ] {
        let r = json_call(a, "POST", path, body).await;
        let j = r.json();
        assert_eq!(
            (r.status, j["code"].as_str()),
            (400, Some(code)),
            "{body}: {j}"
        );
        assert_eq!(j["field"], field, "{body}: {j}");
        assert!(j["message"].as_str().unwrap().contains(field), "{j}");
        assert!(j["request_id"].is_string(), "the standard format: {j}");
    }
    // Unknown fields are refused, unless the route ignores them.
    let unknown = r#"{"title": "x", "subtitle": "y"}"#;
    let r = json_call(a, "POST", "/v1/shelves/3/books", unknown).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"].as_str().unwrap().contains("subtitle"),
        "{}",
        r.json()
    );
    let r = call(
        a,
        "POST",
        "/v1/shelves/3/books",
        &[("host", "lenient.test")],
        unknown.as_bytes(),
    )
    .await;
    assert_eq!((r.status, r.json()["title"].clone()), (200, json!("x")));
    // Not JSON at all; no method for the path; the wrong HTTP method.
    let r = json_call(a, "POST", "/v1/shelves/3/books", "{\"title\": ").await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("invalid_json"))
    );
    let r = json_call(a, "GET", "/v2/nothing", "").await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("route_not_found"))
    );
    let r = json_call(a, "PUT", "/v1/shelves/3/books", "{}").await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (405, json!("method_not_allowed"))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn grpc_statuses_map_to_http_statuses_in_the_standard_format() {
    let (gw, _) = gateway(ONE_ROUTE).await;
    let a = gw.addr();
    let expected = [
        (1, "CANCELLED", 499),
        (2, "UNKNOWN", 500),
        (3, "INVALID_ARGUMENT", 400),
        (4, "DEADLINE_EXCEEDED", 504),
        (5, "NOT_FOUND", 404),
        (6, "ALREADY_EXISTS", 409),
        (7, "PERMISSION_DENIED", 403),
        (8, "RESOURCE_EXHAUSTED", 429),
        (9, "FAILED_PRECONDITION", 400),
        (10, "ABORTED", 409),
        (11, "OUT_OF_RANGE", 400),
        (12, "UNIMPLEMENTED", 501),
        (13, "INTERNAL", 500),
        (14, "UNAVAILABLE", 503),
        (15, "DATA_LOSS", 500),
        (16, "UNAUTHENTICATED", 401),
    ];
    for (code, name, http) in expected {
        let r = json_call(a, "DELETE", &format!("/v1/shelves/1/books/{code}"), "").await;
        let j = r.json();
        assert_eq!(r.status, http, "{name}: {j}");
        assert_eq!(j["status"], http, "{j}");
        assert_eq!(j["code"], "upstream_grpc_status", "{j}");
        assert_eq!(j["grpc"]["code"], code, "{j}");
        assert_eq!(j["grpc"]["status"], name, "{j}");
        assert!(
            j["grpc"]["message"]
                .as_str()
                .unwrap()
                .starts_with("status "),
            "{j}"
        );
        assert!(j["request_id"].is_string(), "{j}");
    }
    // The message percent-decoded, as the server wrote it.
    let r = json_call(a, "DELETE", "/v1/shelves/9/books/x", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["message"],
        "book \"shelves/9/books/x\" not found — déjà vu 100%"
    );
    // Details: a type the descriptor set knows, rendered as JSON; one it
    // does not, kept as bytes.
    let r = json_call(a, "DELETE", "/v1/shelves/2/books/detailed", "").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["grpc"],
        json!({
            "code": 9, "status": "FAILED_PRECONDITION", "message": "the book is checked out",
            "details": [
                {"@type": "type.googleapis.com/bookstore.v1.Book", "id": "7", "title": "Dune"},
                {"@type": "type.googleapis.com/example.Unknown", "value": "AQID"},
            ],
        })
    );
    // A stream that fails before its first message is answered the same way.
    let r = json_call(a, "GET", "/v1/shelves/1/books:stream?pageSize=-1", "").await;
    assert_eq!(
        (r.status, r.json()["grpc"]["status"].clone()),
        (400, json!("OUT_OF_RANGE"))
    );
    gw.shutdown().await;
}

/// Reads `body` until `want` has arrived; returns what was read.
async fn read_until(body: &mut Incoming, got: &mut Vec<u8>, want: &str) {
    within(&format!("the stream to carry {want:?}"), async {
        while !String::from_utf8_lossy(got).contains(want) {
            let frame = body.frame().await.expect("the stream ended early").unwrap();
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
    })
    .await;
}

async fn read_rest(body: &mut Incoming, got: &mut Vec<u8>) {
    within("the end of the stream", async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                got.extend_from_slice(&data);
            }
        }
    })
    .await;
}

#[tokio::test]
async fn server_streams_are_flushed_message_by_message_in_each_format() {
    let routes = "[[routes]]\nname = \"array\"\nhosts = [\"array.test\"]\ncluster = \"grpc\"\n\
         transcode = { descriptor = \"books\" }\n\
         [[routes]]\nname = \"ndjson\"\nhosts = [\"ndjson.test\"]\ncluster = \"grpc\"\n\
         transcode = { descriptor = \"books\", stream = \"ndjson\" }\n\
         [[routes]]\nname = \"sse\"\nhosts = [\"sse.test\"]\ncluster = \"grpc\"\n\
         transcode = { descriptor = \"books\", stream = \"sse\" }\n";
    let (gw, _) = gateway(routes).await;
    let book = |id: u8, shelf: i64| {
        format!(r#"{{"id":"{id}","title":"Book {id}","genre":"SCIENCE","shelfId":"{shelf}"}}"#)
    };
    for (host, shelf, content_type, first, whole) in [
        (
            "array.test",
            101,
            "application/json",
            format!("[{}", book(1, 101)),
            format!("[{},{},{}]", book(1, 101), book(2, 101), book(3, 101)),
        ),
        (
            "ndjson.test",
            102,
            "application/x-ndjson",
            format!("{}\n", book(1, 102)),
            format!("{}\n{}\n{}\n", book(1, 102), book(2, 102), book(3, 102)),
        ),
        (
            "sse.test",
            103,
            "text/event-stream",
            format!("data: {}\n\n", book(1, 103)),
            format!(
                "data: {}\n\ndata: {}\n\ndata: {}\n\n",
                book(1, 103),
                book(2, 103),
                book(3, 103)
            ),
        ),
    ] {
        // The server sends the first book, then waits for the gate: the
        // client must see that book while the stream is still open.
        let gate = server::hold_after_first(shelf);
        let resp = start(
            gw.addr(),
            "GET",
            &format!("/v1/shelves/{shelf}/books:stream?pageSize=3"),
            &[("host", host)],
            b"",
        )
        .await;
        assert_eq!(resp.status(), 200, "{host}");
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            content_type,
            "{host}"
        );
        assert!(resp.headers().get("content-length").is_none());
        let mut body = resp.into_body();
        let mut got = Vec::new();
        read_until(&mut body, &mut got, &book(1, shelf)).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            first,
            "{host}: only the first message"
        );
        assert!(!hyper::body::Body::is_end_stream(&body));
        gate.notify_one();
        read_rest(&mut body, &mut got).await;
        assert_eq!(String::from_utf8_lossy(&got), whole, "{host}");
    }

    // A stream that fails after its first message: the error is the last
    // record where the format has room for one; an array is cut off.
    let path = format!(
        "/v1/shelves/{}/books:stream?pageSize=1",
        server::FAIL_AFTER_FIRST
    );
    let r = call(gw.addr(), "GET", &path, &[("host", "ndjson.test")], b"").await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let last: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(last["error"]["grpc"]["status"], "DATA_LOSS", "{last}");
    assert_eq!(last["error"]["status"], 500);
    let r = call(gw.addr(), "GET", &path, &[("host", "sse.test")], b"").await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.contains("\n\nevent: error\ndata: {"), "{text}");
    let cut = within("the cut-off array", async {
        let stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(&path)
            .header("host", "array.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        // Cut off before or after its head reached the client.
        match sender.send_request(req).await {
            Ok(resp) => resp.into_body().collect().await.map(|_| ()),
            Err(e) => Err(e),
        }
    })
    .await;
    assert!(
        cut.is_err(),
        "an array stream that fails is not closed as if it were whole"
    );
    gw.shutdown().await;
}

/// Decodes a gRPC-Web (binary) response body into its messages and trailers.
fn web_frames(body: &[u8]) -> (Vec<Bytes>, HeaderMap) {
    let mut d = FrameDecoder::default();
    d.push(body);
    let (mut messages, mut trailers) = (Vec::new(), HeaderMap::new());
    while let Some(f) = d.next_frame().unwrap() {
        if f.is_trailers() {
            trailers = decode_trailers(&f.payload).unwrap();
        } else {
            messages.push(f.payload);
        }
    }
    (messages, trailers)
}

#[tokio::test]
async fn grpc_web_binary_and_text_reach_the_same_server_with_cors() {
    let routes = format!(
        "{ONE_ROUTE}[[routes.filters]]\nname = \"cors\"\n\
         config = {{ origins = [\"https://app.example\"], methods = [\"POST\"], \
         headers = [\"content-type\", \"x-grpc-web\", \"x-user-agent\"], \
         expose_headers = [\"grpc-status\", \"grpc-message\"] }}\n"
    );
    let (gw, _) = gateway(&routes).await;
    let a = gw.addr();
    // The browser's preflight, answered by the cors filter on the route.
    let pre = send(
        a,
        "OPTIONS",
        "/bookstore.v1.Bookstore/GetBook",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type,x-grpc-web,x-user-agent",
            ),
        ],
    )
    .await;
    assert_eq!(pre.status, 204, "{}", pre.body);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://app.example")
    );

    let request = encode_frame(
        0,
        &pb::GetBookRequest {
            shelf: Some(pb::Shelf {
                id: 7,
                ..Default::default()
            }),
            book: 42,
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let headers = |ct: &'static str| {
        [
            ("content-type", ct),
            ("x-grpc-web", "1"),
            ("origin", "https://app.example"),
        ]
    };
    // Binary.
    let r = call(
        a,
        "POST",
        "/bookstore.v1.Bookstore/GetBook",
        &headers("application/grpc-web+proto"),
        &request,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/grpc-web+proto"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("grpc-status, grpc-message")
    );
    let (messages, trailers) = web_frames(&r.body);
    assert_eq!(messages.len(), 1);
    let book = pb::Book::decode(messages[0].as_ref()).unwrap();
    assert_eq!(
        (book.id, book.shelf_id, book.title.as_str()),
        (42, 7, "Dune")
    );
    assert_eq!(
        trailers.get("grpc-status").unwrap(),
        "0",
        "trailers in the body"
    );

    // Text: base64 both ways, sent in two separately padded pieces.
    let text = format!(
        "{}{}",
        encode_text(&request[..3]),
        encode_text(&request[3..])
    );
    let r = call(
        a,
        "POST",
        "/bookstore.v1.Bookstore/GetBook",
        &headers("application/grpc-web-text"),
        text.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/grpc-web-text+proto")
    );
    let mut d = TextDecoder::new();
    let decoded = d.push(&r.body).unwrap();
    d.finish().unwrap();
    let (messages, trailers) = web_frames(&decoded);
    assert_eq!(pb::Book::decode(messages[0].as_ref()).unwrap().id, 42);
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // A server stream: every message, then the trailers.
    let list = encode_frame(
        0,
        &pb::ListBooksRequest {
            shelf: 4,
            page_size: 3,
        }
        .encode_to_vec(),
    );
    let r = call(
        a,
        "POST",
        "/bookstore.v1.Bookstore/StreamBooks",
        &headers("application/grpc-web"),
        &list,
    )
    .await;
    let (messages, trailers) = web_frames(&r.body);
    let ids: Vec<i64> = messages
        .iter()
        .map(|m| pb::Book::decode(m.as_ref()).unwrap().id)
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // An error: a trailers-only answer keeps its status in the headers.
    let delete = encode_frame(
        0,
        &pb::DeleteBookRequest {
            name: "shelves/1/books/5".into(),
        }
        .encode_to_vec(),
    );
    let r = call(
        a,
        "POST",
        "/bookstore.v1.Bookstore/DeleteBook",
        &headers("application/grpc-web+proto"),
        &delete,
    )
    .await;
    assert_eq!(r.status, 200);
    let status = r.header("grpc-status").map(str::to_owned).or_else(|| {
        web_frames(&r.body)
            .1
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    });
    assert_eq!(status.as_deref(), Some("5"));

    // Broken base64 is the client's error, named.
    let r = call(
        a,
        "POST",
        "/bookstore.v1.Bookstore/GetBook",
        &headers("application/grpc-web-text"),
        b"AAAA!",
    )
    .await;
    assert_ne!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    gw.shutdown().await;
}

#[tokio::test]
async fn filters_see_the_clients_json_on_both_sides() {
    let routes = format!(
        "{ONE_ROUTE}[[routes.filters]]\nname = \"api-key\"\nconfig = {{ keys = [\"k1\"] }}\n\
         [[routes.filters]]\nname = \"transform\"\n\
         [routes.filters.config.request]\njson = {{ set = {{ \"/title\" = \"set by a filter\" }} }}\n\
         [routes.filters.config.response]\njson = {{ remove = [\"/authorName\"], set = {{ \"/seen\" = \"json\" }} }}\n"
    );
    let (gw, _) = gateway(&routes).await;
    let a = gw.addr();
    // Authentication runs on the HTTP request, before any transcoding.
    let r = json_call(a, "POST", "/v1/shelves/3/books", r#"{"title": 5}"#).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    // The request filter edits the client's JSON (the title it would
    // otherwise refuse as a number is replaced); the response filter edits
    // the JSON answer.
    let r = call(
        a,
        "POST",
        "/v1/shelves/3/books",
        &[("x-api-key", "k1"), ("content-type", "application/json")],
        br#"{"title": 5, "genre": "FICTION"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"shelfId": "3", "title": "set by a filter", "genre": "FICTION", "seen": "json"})
    );
    let r = call(a, "GET", "/v1/books/8", &[("x-api-key", "k1")], b"").await;
    let j = r.json();
    assert_eq!(
        (j["id"].clone(), j["seen"].clone()),
        (json!("8"), json!("json"))
    );
    assert!(j.get("authorName").is_none(), "{j}");
    gw.shutdown().await;
}

/// The descriptor set without the `Bookstore` service (only `Admin`).
fn admin_only_set() -> Vec<u8> {
    let mut set = prost_types::FileDescriptorSet::decode(DESCRIPTOR_SET).unwrap();
    for f in &mut set.file {
        f.service.retain(|s| s.name() != "Bookstore");
    }
    set.encode_to_vec()
}

#[tokio::test]
async fn a_descriptor_set_is_swapped_through_the_api_without_a_restart() {
    let up = server::spawn().await;
    let set = descriptor_file("swap", &admin_only_set());
    let routes = format!(
        "{ONE_ROUTE}[[routes]]\nname = \"admin\"\nhosts = [\"admin.test\"]\ncluster = \"grpc\"\n\
         transcode = {{ descriptor = \"books\", services = [\"bookstore.v1.Admin\"] }}\n"
    );
    let gw = start_gateway(&config(up, &set, &routes)).await;
    let (a, admin) = (gw.addr(), gw.admin_addr().unwrap());
    let auth = format!("Bearer {TOKEN}");
    let auth = [("authorization", auth.as_str())];
    // The set the config names has no Bookstore: its paths are not routed.
    let r = json_call(a, "GET", "/v1/books/5", "").await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("route_not_found"))
    );
    let r = json_call(a, "POST", "/bookstore.v1.Admin/Echo", r#"{"text": "a"}"#).await;
    assert_eq!(r.json(), json!({"text": "a"}));
    let listed = get(admin, "/descriptors", &auth).await.json();
    let before = listed["descriptors"][0]["sha256"].clone();
    assert_eq!(listed["descriptors"][0]["name"], "books");
    assert_eq!(
        listed["descriptors"][0]["services"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let routes = get(admin, "/routes", &auth).await.json();
    assert_eq!(routes["routes"][0]["transcode"], "books");
    assert_eq!(routes["routes"][0]["grpc_web"], true);

    // Refused: not a descriptor set; a set without the service a route
    // names; a name the config does not have; no token. Each leaves the
    // running set serving.
    let r = send_body(admin, "PUT", "/descriptors/books", &auth, b"not protobuf").await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (422, json!("invalid_descriptor"))
    );
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("FileDescriptorSet"),
        "{}",
        r.body
    );
    let mut no_admin = prost_types::FileDescriptorSet::decode(DESCRIPTOR_SET).unwrap();
    for f in &mut no_admin.file {
        f.service.retain(|s| s.name() != "Admin");
    }
    let r = send_body(
        admin,
        "PUT",
        "/descriptors/books",
        &auth,
        no_admin.encode_to_vec(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body
            .contains("routes[1].transcode: no service \\\"bookstore.v1.Admin\\\""),
        "{}",
        r.body
    );
    let r = send_body(
        admin,
        "PUT",
        "/descriptors/books",
        &auth,
        vec![0u8; (16 << 20) + 1],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (413, json!("descriptor_too_large"))
    );
    let r = send_body(admin, "PUT", "/descriptors/other", &auth, DESCRIPTOR_SET).await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("unknown_descriptor"))
    );
    let r = send_body(admin, "PUT", "/descriptors/books", &[], DESCRIPTOR_SET).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        get(admin, "/descriptors", &auth).await.json()["descriptors"][0]["sha256"],
        before
    );
    let r = json_call(a, "POST", "/bookstore.v1.Admin/Echo", r#"{"text": "b"}"#).await;
    assert_eq!(r.json(), json!({"text": "b"}));

    // The full set: the Bookstore's annotated paths are routed at once.
    let r = send_body(admin, "PUT", "/descriptors/books", &auth, DESCRIPTOR_SET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["source"], "api");
    assert_ne!(r.json()["sha256"], before);
    let r = json_call(a, "GET", "/v1/books/5", "").await;
    assert_eq!((r.status, r.json()["id"].clone()), (200, json!("5")));
    let r = call(
        a,
        "POST",
        "/bookstore.v1.Admin/Echo",
        &[("host", "admin.test")],
        br#"{"text": "c"}"#,
    )
    .await;
    assert_eq!(r.json(), json!({"text": "c"}));
    let shown = get(admin, "/descriptors/books", &auth).await.json();
    assert_eq!(shown["services"].as_array().unwrap().len(), 2, "{shown}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_descriptor_set_fails_the_build_naming_it() {
    let up = server::spawn().await;
    let bad = descriptor_file("bad", b"\x0a\x03abc");
    let err = build_gateway(&config(up, &bad, ONE_ROUTE))
        .await
        .expect_err("a bad set is refused");
    assert!(
        err.contains("descriptors.books.path: invalid FileDescriptorSet"),
        "{err}"
    );
    let err = build_gateway(&config(up, "/nonexistent/set.pb", ONE_ROUTE))
        .await
        .expect_err("a missing set is refused");
    assert!(
        err.contains("descriptors.books.path: cannot read /nonexistent/set.pb"),
        "{err}"
    );
    let set = descriptor_file("services", DESCRIPTOR_SET);
    let err = build_gateway(&config(
        up,
        &set,
        "[[routes]]\nname = \"r\"\ncluster = \"grpc\"\n\
         transcode = { descriptor = \"books\", services = [\"bookstore.v1.Missing\"] }\n",
    ))
    .await
    .expect_err("a service the set does not have is refused");
    assert!(
        err.contains(
            "routes[0].transcode: no service \"bookstore.v1.Missing\" in the descriptor set"
        ),
        "{err}"
    );
    // Plain gRPC through a transcoding route still passes through untouched.
    let gw = start_gateway(&config(up, &set, ONE_ROUTE)).await;
    let mut grpc = wasmgate_tests::grpc::pipeline::Upstream::connect(gw.addr()).await;
    let resp = grpc
        .call(
            "/bookstore.v1.Admin/Echo",
            encode_frame(
                0,
                &pb::EchoRequest {
                    big: 5,
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        )
        .await;
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/grpc"
    );
    let body = resp.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap().get("grpc-status").unwrap(), "0");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_uploaded_descriptor_set_survives_a_restart_with_a_data_directory() {
    wasmgate_tests::hermetic();
    let up = server::spawn().await;
    let dir = wasmgate_tests::pki::dir("descriptors-data");
    let set = descriptor_file("data", &admin_only_set());
    let data = format!("data_dir = {:?}\n", dir.join("state").display().to_string());
    let text = config(up, &set, ONE_ROUTE).replace(
        &format!("token = \"{TOKEN}\"\n"),
        &format!("token = \"{TOKEN}\"\n{data}"),
    );
    let file = dir.join("gateway.toml");
    std::fs::write(&file, &text).unwrap();
    let start = || async {
        let config = wasmgate::config::Config::load(&file).unwrap();
        wasmgate::Gateway::build(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .start()
            .await
            .unwrap()
    };
    let auth = format!("Bearer {TOKEN}");
    let auth = [("authorization", auth.as_str())];

    let gw = start().await;
    let admin = gw.admin_addr().unwrap();
    let r = send_body(admin, "PUT", "/descriptors/books", &auth, DESCRIPTOR_SET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let uploaded = r.json()["sha256"].clone();
    gw.shutdown().await;

    // Restarted: the uploaded set, not the file's, is in use.
    let gw = start().await;
    let shown = get(gw.admin_addr().unwrap(), "/descriptors/books", &auth)
        .await
        .json();
    assert_eq!(
        (shown["sha256"].clone(), shown["source"].clone()),
        (uploaded, json!("api"))
    );
    let r = json_call(gw.addr(), "GET", "/v1/books/5", "").await;
    assert_eq!((r.status, r.json()["id"].clone()), (200, json!("5")));
    gw.shutdown().await;

    // The config names another file for it: the upload stood in for the
    // old one only.
    let other = descriptor_file("data-other", &admin_only_set());
    std::fs::write(&file, text.replace(&set, &other)).unwrap();
    let gw = start().await;
    let shown = get(gw.admin_addr().unwrap(), "/descriptors/books", &auth)
        .await
        .json();
    assert_eq!(shown["source"], json!({ "file": other }));
    let r = json_call(gw.addr(), "GET", "/v1/books/5", "").await;
    assert_eq!(r.status, 404);
    gw.shutdown().await;
}
