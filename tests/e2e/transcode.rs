//! Protocol translation's core (`wasmgate-transcode`) against a real tonic
//! server: REST/JSON → transcoder → HTTP/2 → tonic → transcoder → JSON, over
//! a real socket, without the gateway (`translation.rs` runs it through one).

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use wasmgate_tests::grpc::pipeline::{Upstream, rest_call};
use wasmgate_tests::grpc::{DESCRIPTOR_SET, server};
use wasmgate_transcode::frame::FrameDecoder;
use wasmgate_transcode::grpc_web::{self, TextDecoder, WebMode};
use wasmgate_transcode::status::{Code, GrpcStatus};
use wasmgate_transcode::{Transcoder, TranscoderOptions};

async fn setup() -> (Transcoder, Upstream) {
    let t = Transcoder::from_descriptor_set(DESCRIPTOR_SET, TranscoderOptions::default()).unwrap();
    let addr = server::spawn().await;
    (t, Upstream::connect(addr).await)
}

#[tokio::test]
async fn get_with_path_and_query_params() {
    let (t, mut up) = setup().await;
    let r = rest_call(
        &t,
        &mut up,
        Method::GET,
        "/v1/shelves/7/books/9007199254740993?genres=SCIENCE&ids=1&ids=-2&includeMetadata=true\
         &readMask=title,authorName&asOf=2024-02-29T12:00:00.250Z",
        b"",
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
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

    // The additional binding, and the literal route that beats it.
    let r = rest_call(&t, &mut up, Method::GET, "/v1/books/5?note=hi", b"").await;
    assert_eq!(
        (r.json()["id"].clone(), r.json()["title"].clone()),
        (json!("5"), json!("hi"))
    );
    let r = rest_call(&t, &mut up, Method::GET, "/v1/books/featured", b"").await;
    assert_eq!(r.json(), json!({"title": "Featured"}));

    // Multi-segment capture.
    let r = rest_call(&t, &mut up, Method::GET, "/v1/files/docs/a%20b/c.txt", b"").await;
    assert_eq!(
        r.json(),
        json!({"path": "docs/a b/c.txt", "content": "ZG9jcy9hIGIvYy50eHQ="})
    );
    // Custom HEAD method, google.protobuf.Empty both ways.
    let r = rest_call(&t, &mut up, Method::HEAD, "/v1/health", b"").await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({})));
}

#[tokio::test]
async fn post_with_body_field_and_whole_body() {
    let (t, mut up) = setup().await;
    let r = rest_call(
        &t,
        &mut up,
        Method::POST,
        "/v1/shelves/3/books?requestId=req-1",
        br#"{"title": "Dune", "genre": "FICTION", "publish_time": "1965-08-01T00:00:00Z",
            "readTime": "1.000000001s", "rating": 4, "metadata": {"awards": ["Hugo"], "n": 1},
            "pageCount": "412", "id": 10}"#,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.json(),
        json!({
            "id": "10", "title": "Dune", "genre": "FICTION", "publishTime": "1965-08-01T00:00:00Z",
            "readTime": "1.000000001s", "rating": 4, "metadata": {"awards": ["Hugo"], "n": 1.0},
            "pageCount": "412", "shelfId": "3", "tags": ["req-1"]
        })
    );

    // body: "*" with a path capture and a verb.
    let r = rest_call(
        &t,
        &mut up,
        Method::POST,
        "/v1/shelves/s1/books/b1:publish",
        br#"{"publishTime": "2030-01-01T00:00:00Z", "embargo": "60s", "note": "", "labels": {"k": null},
            "printRun": "-9223372036854775808", "genre": 2}"#,
    )
    .await;
    assert_eq!(
        r.json(),
        json!({
            "id": "-9223372036854775808", "title": "shelves/s1/books/b1", "genre": "SCIENCE",
            "publishTime": "2030-01-01T00:00:00Z", "readTime": "60s", "metadata": {"k": null},
            "tags": [""]
        })
    );

    // body: "tags" (a repeated field) on PUT.
    let r = rest_call(
        &t,
        &mut up,
        Method::PUT,
        "/v1/books/8/tags",
        br#"["a", "b"]"#,
    )
    .await;
    assert_eq!(r.json(), json!({"id": "8", "tags": ["a", "b"]}));
}

#[tokio::test]
async fn unannotated_service_default_route() {
    let (t, mut up) = setup().await;
    let body = json!({
        "big": "-12", "ubig": "18446744073709551615", "ratio": 0.25, "blob": "AAEC",
        "counts": {"x": "9007199254740993"}, "text": "hello", "extra": {"nested": {"a": [true]}},
        "flag": false
    });
    let r = rest_call(
        &t,
        &mut up,
        Method::POST,
        "/bookstore.v1.Admin/Echo",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), body);
}

#[tokio::test]
async fn error_status_maps_to_http() {
    let (t, mut up) = setup().await;
    let r = rest_call(&t, &mut up, Method::DELETE, "/v1/shelves/9/books/2", b"").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // tonic percent-encodes grpc-message; it comes back decoded.
    assert_eq!(
        r.json(),
        json!({"code": 5, "message": "book \"shelves/9/books/2\" not found — déjà vu 100%"})
    );

    let r = rest_call(
        &t,
        &mut up,
        Method::GET,
        "/v1/shelves/1/books:stream?pageSize=-1",
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.grpc.unwrap().code, Code::OutOfRange);

    // Transcoding errors never reach the server.
    let r = rest_call(&t, &mut up, Method::GET, "/v1/shelves/abc/books/1", b"").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json()["message"],
        json!(r#"field "shelf.id": invalid value "abc" for int64"#)
    );
    let r = rest_call(
        &t,
        &mut up,
        Method::POST,
        "/v1/shelves/1/books",
        br#"{"bogus": 1}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["message"].as_str().unwrap().contains("bogus"));
}

#[tokio::test]
async fn response_body_field() {
    let (t, mut up) = setup().await;
    let r = rest_call(
        &t,
        &mut up,
        Method::GET,
        "/v1/shelves/4/books?pageSize=2",
        b"",
    )
    .await;
    assert_eq!(
        r.json(),
        json!([
            {"id": "1", "shelfId": "4", "title": "Book 1", "genre": "SCIENCE"},
            {"id": "2", "shelfId": "4", "title": "Book 2", "genre": "SCIENCE"},
        ])
    );
}

#[tokio::test]
async fn server_stream_read_frame_by_frame() {
    let (t, mut up) = setup().await;
    let r = rest_call(
        &t,
        &mut up,
        Method::GET,
        "/v1/shelves/2/books:stream?pageSize=3",
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.grpc.as_ref().unwrap().code, Code::Ok);
    // Each piece of JSON was made as a DATA frame arrived (how the server's
    // frames are cut is its business; `translation.rs` shows the gateway
    // passing each message on before the next one is sent), then the array
    // closed.
    let chunks: Vec<String> = r
        .chunks
        .iter()
        .map(|c| String::from_utf8(c.clone()).unwrap())
        .collect();
    assert_eq!(chunks.last().map(String::as_str), Some("]"));
    assert_eq!(
        chunks.concat(),
        concat!(
            r#"[{"id":"1","title":"Book 1","genre":"SCIENCE","shelfId":"2"}"#,
            r#",{"id":"2","title":"Book 2","genre":"SCIENCE","shelfId":"2"}"#,
            r#",{"id":"3","title":"Book 3","genre":"SCIENCE","shelfId":"2"}"#,
            "]",
        )
    );
    assert_eq!(r.json().as_array().unwrap().len(), 3);

    // The same call at the frame level, without the JSON side.
    let req = t
        .request(&Method::GET, "/v1/shelves/2/books:stream?pageSize=2", b"")
        .unwrap();
    let resp = up.call(req.path(), req.body()).await;
    let mut body = resp.into_body();
    let mut decoder = FrameDecoder::default();
    let (mut messages, mut trailers) = (Vec::new(), None);
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(data) => {
                decoder.push(&data);
                while let Some(f) = decoder.next_frame().unwrap() {
                    let msg = wasmgate_transcode::response::decode_message(
                        req.route.method().output(),
                        &f.payload,
                    )
                    .unwrap();
                    messages.push(msg);
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    decoder.finish().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[1].get_field_by_name("id").unwrap().as_i64(),
        Some(2)
    );
    assert_eq!(
        GrpcStatus::from_headers(&trailers.unwrap()).unwrap().code,
        Code::Ok
    );
}

#[tokio::test]
async fn grpc_web_text_round_trip() {
    let (t, mut up) = setup().await;
    // A browser's grpc-web-text request for Admin/Echo: base64 of the frame,
    // delivered in uneven chunks.
    let echo = json!({"big": "7", "text": "web"});
    let route = t
        .request(
            &Method::POST,
            "/bookstore.v1.Admin/Echo",
            echo.to_string().as_bytes(),
        )
        .unwrap();
    let text = grpc_web::encode_text(&route.body());
    let mode = WebMode::from_content_type("application/grpc-web-text").unwrap();
    let mut request = grpc_web::RequestBody::new(mode);
    let mut frames = Vec::new();
    for chunk in text.as_bytes().chunks(5) {
        frames.extend_from_slice(&request.push(Bytes::copy_from_slice(chunk)).unwrap());
    }
    request.finish().unwrap();
    assert_eq!(frames, route.body().to_vec());

    // Forward upstream as plain gRPC (content-type application/grpc); answer
    // as gRPC-Web text: data frames, then the trailers as a 0x80 frame.
    assert_eq!(grpc_web::UPSTREAM_CONTENT_TYPE, "application/grpc");
    let encoder = grpc_web::ResponseEncoder::new(mode);
    let resp = up.call("/bookstore.v1.Admin/Echo", frames.into()).await;
    let mut body = resp.into_body();
    let mut web_body = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame.unwrap().into_data() {
            Ok(data) => web_body.extend_from_slice(&encoder.data(&data)),
            Err(frame) => {
                web_body.extend_from_slice(&encoder.trailers(&frame.into_trailers().unwrap()))
            }
        }
    }

    // What the browser decodes.
    let raw = TextDecoder::new().push(&web_body).unwrap();
    let mut d = FrameDecoder::default();
    d.push(&raw);
    let msg = d.next_frame().unwrap().unwrap();
    assert!(!msg.is_trailers());
    let echoed =
        wasmgate_transcode::response::decode_message(route.route.method().output(), &msg.payload)
            .unwrap();
    let json =
        wasmgate_transcode::response::message_to_json(&echoed, None, &Default::default()).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&json).unwrap(),
        echo
    );
    let trailer = d.next_frame().unwrap().unwrap();
    assert!(trailer.is_trailers());
    let trailers = grpc_web::decode_trailers(&trailer.payload).unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    assert!(d.next_frame().unwrap().is_none());
}
