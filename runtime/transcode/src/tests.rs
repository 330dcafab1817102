//! Tests over a real descriptor set: protos/test/bookstore.proto compiled
//! at test time with protox (annotations included via its imports).

use std::sync::OnceLock;

use http::Method;
use prost::Message as _;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{Value as Json, json};

use crate::descriptor::{self, HttpMethodSpec};
use crate::frame::{FrameDecoder, encode_frame};
use crate::request::RequestOptions;
use crate::response::ResponseOptions;
use crate::{ConfigError, TranscodeError, Transcoder, TranscoderOptions};

const PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/protos");

/// The descriptor set as a gateway would get it. NB: protox's
/// `encode_file_descriptor_set()` keeps extension options; encoding
/// `compile()`'s prost-types `FileDescriptorSet` would drop google.api.http.
fn compile(dir: &str, file: &str, imports: bool) -> Vec<u8> {
    protox::Compiler::new([dir, PROTOS])
        .unwrap()
        .include_imports(imports)
        .include_source_info(false)
        .open_files([file])
        .unwrap()
        .encode_file_descriptor_set()
}

fn bookstore_set() -> &'static [u8] {
    static SET: OnceLock<Vec<u8>> = OnceLock::new();
    SET.get_or_init(|| compile(PROTOS, "test/bookstore.proto", true))
}

fn transcoder() -> Transcoder {
    Transcoder::from_descriptor_set(bookstore_set(), TranscoderOptions::default()).unwrap()
}

fn with_request(options: RequestOptions) -> Transcoder {
    Transcoder::from_descriptor_set(
        bookstore_set(),
        TranscoderOptions {
            request: options,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A message as JSON with proto field names, for compact assertions.
fn dump(msg: &DynamicMessage) -> Json {
    msg.serialize_with_options(
        serde_json::value::Serializer,
        &SerializeOptions::new().use_proto_field_name(true),
    )
    .unwrap()
}

/// Compiles a one-off proto (written to a temp dir) importing the annotations.
fn compile_source(name: &str, source: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("transcode-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.proto")), source).unwrap();
    compile(dir.to_str().unwrap(), &format!("{name}.proto"), true)
}

fn config_error(name: &str, source: &str) -> String {
    Transcoder::from_descriptor_set(&compile_source(name, source), Default::default())
        .unwrap_err()
        .to_string()
}

// ---- 1. loading ----

#[test]
fn loads_and_rejects_bad_descriptor_sets() {
    let pool = descriptor::load_descriptor_set(bookstore_set()).unwrap();
    assert!(pool.get_service_by_name("bookstore.v1.Bookstore").is_some());

    let e = descriptor::load_descriptor_set(b"\x0a\x05garbage").unwrap_err();
    assert!(matches!(e, ConfigError::Descriptor(_)));
    assert!(
        e.to_string().starts_with("invalid FileDescriptorSet: "),
        "{e}"
    );

    // Without its imports the set does not resolve.
    let e = descriptor::load_descriptor_set(&compile(PROTOS, "test/bookstore.proto", false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("google/api/annotations.proto"), "{e}");
}

#[test]
fn annotations_without_their_extension_are_reported() {
    // Drop google/api/*.proto from the set and from bookstore's imports:
    // the options survive only as unknown fields of MethodOptions. (Edited
    // as a DynamicMessage: prost-types would drop those unknown fields.)
    let fds_desc = prost_reflect::DescriptorPool::global()
        .get_message_by_name("google.protobuf.FileDescriptorSet")
        .unwrap();
    let mut set = DynamicMessage::decode(fds_desc, bookstore_set()).unwrap();
    let files = set
        .get_field_by_name_mut("file")
        .unwrap()
        .as_list_mut()
        .unwrap();
    files.retain(|f| {
        let name = f.as_message().unwrap().get_field_by_name("name").unwrap();
        !name.as_str().unwrap().starts_with("google/api/")
    });
    for file in files.iter_mut() {
        let file = file.as_message_mut().unwrap();
        let deps = file
            .get_field_by_name_mut("dependency")
            .unwrap()
            .as_list_mut()
            .unwrap();
        deps.retain(|d| d.as_str() != Some("google/api/annotations.proto"));
    }
    let e = descriptor::load_descriptor_set(&set.encode_to_vec())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "invalid FileDescriptorSet: method bookstore.v1.Bookstore.GetBook has a google.api.http \
         option but the set does not include google/api/annotations.proto (build it with its imports)"
    );
}

#[test]
fn prost_types_reencoding_loses_the_annotations() {
    // The gotcha behind `compile()` above: protox::compile returns a
    // prost-types FileDescriptorSet, whose MethodOptions has no room for
    // extensions, so re-encoding it drops every google.api.http option.
    let fds = protox::compile(["test/bookstore.proto"], [PROTOS]).unwrap();
    let pool = descriptor::load_descriptor_set(&fds.encode_to_vec()).unwrap();
    let get_book = pool
        .get_service_by_name("bookstore.v1.Bookstore")
        .unwrap()
        .methods()
        .find(|m| m.name() == "GetBook")
        .unwrap();
    assert_eq!(descriptor::http_rule(&get_book).unwrap(), None);
}

// ---- 2. google.api.http rules ----

#[test]
fn reads_http_rules_from_method_options() {
    let pool = descriptor::load_descriptor_set(bookstore_set()).unwrap();
    let svc = pool.get_service_by_name("bookstore.v1.Bookstore").unwrap();
    let method = |n: &str| svc.methods().find(|m| m.name() == n).unwrap();

    let get = descriptor::http_rule(&method("GetBook")).unwrap().unwrap();
    assert_eq!(get.method, HttpMethodSpec::Get);
    assert_eq!(get.path, "/v1/shelves/{shelf.id}/books/{book}");
    assert_eq!(get.additional_bindings.len(), 1);
    assert_eq!(get.additional_bindings[0].path, "/v1/books/{book}");

    let create = descriptor::http_rule(&method("CreateBook"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (create.method, create.body.as_str()),
        (HttpMethodSpec::Post, "book")
    );
    let list = descriptor::http_rule(&method("ListBooks"))
        .unwrap()
        .unwrap();
    assert_eq!(list.response_body, "books");
    let check = descriptor::http_rule(&method("Check")).unwrap().unwrap();
    assert_eq!(check.method, HttpMethodSpec::Custom("HEAD".into()));
    assert_eq!(check.path, "/v1/health");

    let admin = pool.get_service_by_name("bookstore.v1.Admin").unwrap();
    assert_eq!(
        descriptor::http_rule(&admin.methods().next().unwrap()).unwrap(),
        None
    );
}

// ---- 3. routing ----

fn route(t: &Transcoder, method: Method, path: &str) -> Result<String, TranscodeError> {
    t.router()
        .find(&method, path)
        .map(|m| format!("{} {:?}", m.route.method().name(), m.captures))
}

#[test]
fn routes_most_specific_first() {
    let t = transcoder();
    let ok = |m: Method, p: &str| route(&t, m, p).unwrap();
    assert_eq!(
        ok(Method::GET, "/v1/shelves/7/books/42"),
        r#"GetBook ["7", "42"]"#
    );
    assert_eq!(ok(Method::GET, "/v1/books/42"), r#"GetBook ["42"]"#);
    // Literal beats the additional binding's {book}.
    assert_eq!(ok(Method::GET, "/v1/books/featured"), "GetFeaturedBook []");
    assert_eq!(
        ok(Method::POST, "/v1/shelves/s1/books/b%201:publish"),
        r#"PublishBook ["shelves/s1/books/b 1"]"#
    );
    assert_eq!(
        ok(Method::DELETE, "/v1/shelves/s1/books/b1"),
        r#"DeleteBook ["shelves/s1/books/b1"]"#
    );
    assert_eq!(ok(Method::GET, "/v1/shelves/3/books"), r#"ListBooks ["3"]"#);
    assert_eq!(
        ok(Method::GET, "/v1/shelves/3/books:stream"),
        r#"StreamBooks ["3"]"#
    );
    assert_eq!(
        ok(Method::GET, "/v1/files/dir%20a/b%2Fc.txt"),
        r#"GetFile ["dir a/b%2Fc.txt"]"#
    );
    assert_eq!(ok(Method::PUT, "/v1/books/5/tags"), r#"TagBook ["5"]"#);
    assert_eq!(ok(Method::HEAD, "/v1/health"), "Check []");
    assert_eq!(ok(Method::POST, "/bookstore.v1.Admin/Echo"), "Echo []");

    let e = route(&t, Method::GET, "/v1/health").unwrap_err();
    assert_eq!(e.http_status(), 405);
    let e = route(&t, Method::GET, "/v2/nothing").unwrap_err();
    assert_eq!(
        (e.http_status().as_u16(), e.to_string()),
        (404, "no route for GET /v2/nothing".into())
    );
    // Annotated methods get no default route.
    assert_eq!(
        route(&t, Method::POST, "/bookstore.v1.Bookstore/GetBook")
            .unwrap_err()
            .http_status(),
        404
    );
}

#[test]
fn rejects_bad_rules_at_load() {
    let head = "syntax = \"proto3\"; package p; import \"google/api/annotations.proto\";\n\
                message R { int64 id = 1; repeated string tags = 2; R sub = 3; }\n";
    let svc = |rpcs: &str| format!("{head} service S {{ {rpcs} }}");
    let e = config_error(
        "conflict",
        &svc(
            r#"rpc A(R) returns (R) { option (google.api.http) = { get: "/v1/{id}" }; }
               rpc B(R) returns (R) { option (google.api.http) = { get: "/v1/{sub.id}" }; }"#,
        ),
    );
    assert!(e.contains("bound to both p.S.A and p.S.B"), "{e}");
    let e = config_error(
        "nofield",
        &svc(r#"rpc A(R) returns (R) { option (google.api.http) = { get: "/v1/{nope}" }; }"#),
    );
    assert!(
        e.contains("method p.S.A: path variable \"nope\": no field \"nope\" in p.R"),
        "{e}"
    );
    let e = config_error(
        "repeated",
        &svc(r#"rpc A(R) returns (R) { option (google.api.http) = { get: "/v1/{sub.tags}" }; }"#),
    );
    assert!(e.contains("must be a singular primitive field"), "{e}");
    let e = config_error(
        "body",
        &svc(
            r#"rpc A(R) returns (R) { option (google.api.http) = { post: "/v1/x" body: "nope" }; }"#,
        ),
    );
    assert!(e.contains("body field \"nope\" is not in p.R"), "{e}");
    let e = config_error(
        "resp",
        &svc(
            r#"rpc A(R) returns (R) { option (google.api.http) = { post: "/v1/x" response_body: "nope" }; }"#,
        ),
    );
    assert!(e.contains("response_body field \"nope\""), "{e}");
    let e = config_error(
        "tpl",
        &svc(r#"rpc A(R) returns (R) { option (google.api.http) = { get: "/v1/**/x" }; }"#),
    );
    assert!(e.contains("'**' must be the last segment"), "{e}");
    let e = config_error(
        "nopattern",
        &svc(r#"rpc A(R) returns (R) { option (google.api.http) = { body: "*" }; }"#),
    );
    assert!(e.contains("no pattern"), "{e}");
}

// ---- 4. request messages ----

#[test]
fn binds_path_and_query_with_conversions() {
    let t = transcoder();
    let req = t
        .request(
            &Method::GET,
            "/v1/shelves/7/books/-42?includeMetadata=true&genres=FICTION&genres=2&ids=1&ids=9007199254740993\
             &read_mask=title,authorName&note=hi%20there&asOf=2024-01-02T03:04:05.5Z&shelf.theme=sci%2Dfi",
            b"",
        )
        .unwrap();
    assert_eq!(req.path(), "/bookstore.v1.Bookstore/GetBook");
    assert_eq!(
        dump(&req.message),
        json!({
            "shelf": {"id": "7", "theme": "sci-fi"},
            "book": "-42",
            "include_metadata": true,
            "genres": ["FICTION", "SCIENCE"],
            "ids": ["1", "9007199254740993"],
            "read_mask": "title,authorName",
            "note": "hi there",
            "as_of": "2024-01-02T03:04:05.500Z",
        })
    );
    // The frame round-trips.
    let mut d = FrameDecoder::default();
    d.push(&req.body());
    let payload = d.next_frame().unwrap().unwrap().payload;
    assert_eq!(payload, req.message.encode_to_vec());
}

#[test]
fn path_and_query_errors_name_the_field() {
    let t = transcoder();
    let err = |pq: &str| t.request(&Method::GET, pq, b"").unwrap_err();
    let e = err("/v1/shelves/abc/books/1");
    assert_eq!(
        e.to_string(),
        r#"field "shelf.id": invalid value "abc" for int64"#
    );
    assert_eq!(e.http_status(), 400);
    assert_eq!(
        err("/v1/books/1?includeMetadata=yes").to_string(),
        r#"field "includeMetadata": invalid value "yes" for bool"#
    );
    assert_eq!(
        err("/v1/books/1?genres=POETRY").to_string(),
        r#"field "genres": invalid value "POETRY" for bookstore.v1.Genre"#
    );
    assert!(
        err("/v1/books/1?asOf=yesterday").to_string().starts_with(
            r#"field "asOf": invalid value "yesterday" for google.protobuf.Timestamp"#
        )
    );
    assert_eq!(
        err("/v1/books/1?color=red").to_string(),
        r#"unknown query parameter "color""#
    );
    assert_eq!(
        err("/v1/books/1?book=2").to_string(),
        r#"field "book": cannot be set by a query parameter: it is bound by the URL path"#
    );
    assert!(
        err("/v1/books/1?shelf=2")
            .to_string()
            .contains("cannot be set from a string")
    );

    let lenient = with_request(RequestOptions {
        ignore_unknown_query_parameters: true,
        ignored_query_parameters: vec!["key".into()],
        query_plus_as_space: true,
        ..Default::default()
    });
    let req = lenient
        .request(&Method::GET, "/v1/books/1?color=red&key=x&note=a+b", b"")
        .unwrap();
    assert_eq!(dump(&req.message), json!({"book": "1", "note": "a b"}));
    assert!(t.request(&Method::GET, "/v1/books/1?key=x", b"").is_err());
}

#[test]
fn body_field_with_proto3_json_mapping() {
    let t = transcoder();
    let body = br#"{
        "id": "9007199254740993", "title": "Dune", "genre": "FICTION",
        "publish_time": "1965-08-01T00:00:00Z", "readTime": "3600.5s",
        "rating": 5, "metadata": {"awards": ["Hugo", "Nebula"], "score": 9.5, "x": null},
        "tags": ["sf"], "author_name": "Frank Herbert", "pageCount": 412
    }"#;
    let req = t
        .request(&Method::POST, "/v1/shelves/3/books?request_id=r-1", body)
        .unwrap();
    assert_eq!(req.path(), "/bookstore.v1.Bookstore/CreateBook");
    assert_eq!(
        dump(&req.message),
        json!({
            "shelf": "3",
            "request_id": "r-1",
            "book": {
                "id": "9007199254740993", "title": "Dune", "genre": "FICTION",
                "publish_time": "1965-08-01T00:00:00Z", "read_time": "3600.500s",
                "rating": 5, "metadata": {"awards": ["Hugo", "Nebula"], "score": 9.5, "x": null},
                "tags": ["sf"], "author_name": "Frank Herbert", "page_count": "412"
            }
        })
    );
    // A query parameter may not reach into the body field.
    let e = t
        .request(&Method::POST, "/v1/shelves/3/books?book.title=x", b"{}")
        .unwrap_err();
    assert!(e.to_string().contains("it is in the request body"), "{e}");
}

#[test]
fn body_errors_name_the_field_and_unknown_fields_are_refused() {
    let t = transcoder();
    let post = |body: &str| t.request(&Method::POST, "/v1/shelves/3/books", body.as_bytes());
    let e = post(r#"{"id": "abc"}"#).unwrap_err();
    assert!(e.to_string().starts_with(r#"field "book.id": "#), "{e}");
    assert_eq!(e.http_status(), 400);
    let e = post(r#"{"publishTime": "not a time"}"#).unwrap_err();
    assert!(
        e.to_string().starts_with(r#"field "book.publishTime": "#),
        "{e}"
    );
    let e = post(r#"{"genre": "POETRY"}"#).unwrap_err();
    assert!(e.to_string().starts_with(r#"field "book.genre": "#), "{e}");
    let e = post(r#"{"title": "x", "subtitle": "y"}"#).unwrap_err();
    assert!(e.to_string().contains("subtitle"), "{e}");
    let e = post(r#"{"title": "x""#).unwrap_err();
    assert!(matches!(e, TranscodeError::Body(_)), "{e}");
    let e = post(r#"{"title": "x"} {}"#).unwrap_err();
    assert!(matches!(e, TranscodeError::Body(_)), "{e}");

    let lenient = with_request(RequestOptions {
        ignore_unknown_fields: true,
        ..Default::default()
    });
    let req = lenient
        .request(
            &Method::POST,
            "/v1/shelves/3/books",
            br#"{"title": "x", "subtitle": "y"}"#,
        )
        .unwrap();
    assert_eq!(
        dump(&req.message),
        json!({"shelf": "3", "book": {"title": "x"}})
    );
}

#[test]
fn whole_body_with_path_and_verb() {
    let t = transcoder();
    let body = br#"{"name": "ignored", "publishTime": "2030-01-01T00:00:00+01:00", "embargo": "1.5s",
        "note": "n", "labels": {"a": [1, "x", true]}, "printRun": 9007199254740993, "genre": "SCIENCE"}"#;
    let req = t
        .request(&Method::POST, "/v1/shelves/s1/books/b1:publish", body)
        .unwrap();
    assert_eq!(
        dump(&req.message),
        json!({
            "name": "shelves/s1/books/b1",
            "publish_time": "2029-12-31T23:00:00Z", "embargo": "1.500s", "note": "n",
            "labels": {"a": [1.0, "x", true]}, "print_run": "9007199254740993", "genre": "SCIENCE"
        })
    );
    // body "*": nothing is left for the query.
    let e = t
        .request(
            &Method::POST,
            "/v1/shelves/s1/books/b1:publish?genre=FICTION",
            b"{}",
        )
        .unwrap_err();
    assert_eq!(e.to_string(), r#"unknown query parameter "genre""#);
    // An empty body is an empty message.
    let req = t
        .request(&Method::POST, "/v1/shelves/s1/books/b1:publish", b"")
        .unwrap();
    assert_eq!(dump(&req.message), json!({"name": "shelves/s1/books/b1"}));
}

#[test]
fn repeated_body_field_and_no_smuggling() {
    let t = transcoder();
    let req = t
        .request(&Method::PUT, "/v1/books/5/tags", br#"["a", "b"]"#)
        .unwrap();
    assert_eq!(dump(&req.message), json!({"book": "5", "tags": ["a", "b"]}));
    let e = t
        .request(&Method::PUT, "/v1/books/5/tags", br#"["a"], "book": 6"#)
        .unwrap_err();
    assert!(matches!(e, TranscodeError::Body(_)), "{e}");
    let e = t
        .request(&Method::PUT, "/v1/books/5/tags", br#"["a", 1]"#)
        .unwrap_err();
    assert!(e.to_string().starts_with(r#"field "tags[1]": "#), "{e}");
}

#[test]
fn unannotated_method_takes_the_whole_body() {
    let t = transcoder();
    let body = br#"{"big": "-9223372036854775808", "ubig": "18446744073709551615", "ratio": "NaN",
        "blob": "aGk_", "counts": {"a": "1", "b": 2}, "number": 7, "extra": {"k": {}}, "flag": false}"#;
    let req = t
        .request(&Method::POST, "/bookstore.v1.Admin/Echo", body)
        .unwrap();
    assert_eq!(req.path(), "/bookstore.v1.Admin/Echo");
    assert_eq!(
        dump(&req.message),
        json!({"big": "-9223372036854775808", "ubig": "18446744073709551615", "ratio": "NaN",
               "blob": "aGk/", "counts": {"a": "1", "b": "2"}, "number": 7, "extra": {"k": {}}, "flag": false})
    );
}

// ---- 5. responses ----

fn book_message(t: &Transcoder, json: &str) -> DynamicMessage {
    let desc = t.pool().get_message_by_name("bookstore.v1.Book").unwrap();
    let mut de = serde_json::Deserializer::from_str(json);
    DynamicMessage::deserialize(desc, &mut de).unwrap()
}

#[test]
fn unary_response_to_json() {
    let t = transcoder();
    let route = t.request(&Method::GET, "/v1/books/1", b"").unwrap().route;
    let book = book_message(
        &t,
        r#"{"id": "1", "title": "Dune", "genre": "FICTION", "publishTime": "1965-08-01T00:00:00Z",
            "rating": 0, "pageCount": "412", "authorName": ""}"#,
    );
    let frame = encode_frame(0, &book.encode_to_vec());
    let mut rt = t.response(route);
    let mut out = Vec::new();
    for b in frame.iter() {
        out.extend(rt.push(&[*b]).unwrap());
    }
    out.extend(rt.finish().unwrap());
    assert_eq!(
        serde_json::from_slice::<Json>(&out).unwrap(),
        json!({"id": "1", "title": "Dune", "genre": "FICTION", "publishTime": "1965-08-01T00:00:00Z",
               "rating": 0, "pageCount": "412"})
    );

    let opts = ResponseOptions {
        emit_defaults: true,
        use_proto_field_names: true,
        enums_as_ints: true,
        ..Default::default()
    };
    let json = crate::response::message_to_json(&book, None, &opts).unwrap();
    let v: Json = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["genre"], json!(1));
    assert_eq!(v["author_name"], json!(""));
    assert_eq!(v["shelf_id"], json!("0"));
    assert_eq!(v["tags"], json!([]));

    // A second message for a unary method is an upstream error.
    let mut rt = t.response(route);
    let e = rt
        .push(&[frame.as_ref(), frame.as_ref()].concat())
        .unwrap_err();
    assert_eq!(e.http_status(), 502);
    // So is a compressed one.
    let e = t.response(route).push(&encode_frame(1, b"")).unwrap_err();
    assert!(e.to_string().contains("compressed"));
}

#[test]
fn response_body_selects_a_field() {
    let t = transcoder();
    let route = t
        .request(&Method::GET, "/v1/shelves/1/books", b"")
        .unwrap()
        .route;
    let desc = t
        .pool()
        .get_message_by_name("bookstore.v1.ListBooksResponse")
        .unwrap();
    let resp = DynamicMessage::deserialize(
        desc.clone(),
        json!({"books": [{"id": "1"}, {"title": "b"}], "nextPageToken": "t"}),
    )
    .unwrap();
    let mut rt = t.response(route);
    let out = rt.push(&encode_frame(0, &resp.encode_to_vec())).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"[{"id":"1"},{"title":"b"}]"#
    );
    // An empty selected field still renders.
    let mut rt = t.response(route);
    let out = rt
        .push(&encode_frame(0, &DynamicMessage::new(desc).encode_to_vec()))
        .unwrap();
    assert_eq!(out, b"[]");
}

#[test]
fn server_stream_to_json_array_and_lines() {
    let t = transcoder();
    let route = t
        .request(&Method::GET, "/v1/shelves/1/books:stream", b"")
        .unwrap()
        .route;
    let frames: Vec<u8> = ["1", "2"]
        .iter()
        .flat_map(|id| {
            encode_frame(
                0,
                &book_message(&t, &format!(r#"{{"id": "{id}"}}"#)).encode_to_vec(),
            )
            .to_vec()
        })
        .collect();
    let mut rt = t.response(route);
    assert!(rt.is_streaming());
    let mut out = Vec::new();
    for chunk in frames.chunks(3) {
        out.extend(rt.push(chunk).unwrap());
    }
    out.extend(rt.finish().unwrap());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"[{"id":"1"},{"id":"2"}]"#
    );
    assert_eq!(t.response(route).finish().unwrap(), b"[]");

    let nd = Transcoder::from_descriptor_set(
        bookstore_set(),
        TranscoderOptions {
            response: ResponseOptions {
                stream: crate::response::StreamFormat::NewlineDelimited,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let route = nd
        .request(&Method::GET, "/v1/shelves/1/books:stream", b"")
        .unwrap()
        .route;
    let mut rt = nd.response(route);
    let mut out = rt.push(&frames).unwrap();
    out.extend(rt.finish().unwrap());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"id\":\"1\"}\n{\"id\":\"2\"}\n"
    );

    let sse = Transcoder::from_descriptor_set(
        bookstore_set(),
        TranscoderOptions {
            response: ResponseOptions {
                stream: crate::response::StreamFormat::ServerSentEvents,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let route = sse
        .request(&Method::GET, "/v1/shelves/1/books:stream", b"")
        .unwrap()
        .route;
    let mut rt = sse.response(route);
    let mut out = rt.push(&frames).unwrap();
    out.extend(rt.finish().unwrap());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "data: {\"id\":\"1\"}\n\ndata: {\"id\":\"2\"}\n\n"
    );
    use crate::response::StreamFormat;
    assert_eq!(StreamFormat::Array.error_record(b"{}"), None);
    assert_eq!(
        StreamFormat::NewlineDelimited.error_record(b"{\"code\":5}"),
        Some(b"{\"error\":{\"code\":5}}\n".to_vec())
    );
    assert_eq!(
        StreamFormat::ServerSentEvents.error_record(b"{}"),
        Some(b"event: error\ndata: {}\n\n".to_vec())
    );
}

#[test]
fn routes_only_the_services_named() {
    let all = transcoder();
    let services: std::collections::BTreeSet<String> = all
        .router()
        .routes()
        .iter()
        .map(|r| r.method().parent_service().full_name().to_owned())
        .collect();
    assert!(services.len() >= 2, "{services:?}");
    let first = services.iter().next().unwrap().clone();
    let only = Transcoder::from_descriptor_set(
        bookstore_set(),
        TranscoderOptions {
            services: Some(vec![first.clone()]),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!only.router().routes().is_empty());
    assert!(
        only.router()
            .routes()
            .iter()
            .all(|r| r.method().parent_service().full_name() == first)
    );
    let err = Transcoder::from_descriptor_set(
        bookstore_set(),
        TranscoderOptions {
            services: Some(vec!["nope.Missing".into()]),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("no service \"nope.Missing\" in the descriptor set (it has: "),
        "{err}"
    );
}

/// The exact texts clients see for body errors.
#[test]
fn body_error_texts() {
    let t = transcoder();
    for (m, pq, body, want) in [
        (
            Method::POST,
            "/v1/shelves/3/books",
            r#"{"id": "abc"}"#,
            r#"field "book.id": expected int64: invalid digit found in string"#,
        ),
        (
            Method::POST,
            "/v1/shelves/3/books",
            r#"{"publishTime": "not a time"}"#,
            r#"field "book.publishTime": expected google.protobuf.Timestamp: invalid rfc3339 timestamp: invalid date"#,
        ),
        (
            Method::POST,
            "/v1/shelves/3/books",
            r#"{"genre": "POETRY"}"#,
            r#"field "book.genre": expected bookstore.v1.Genre: unrecognized enum value 'POETRY'"#,
        ),
        (
            Method::POST,
            "/v1/shelves/3/books",
            r#"{"title": "x", "subtitle": "y"}"#,
            r#"field "book": unrecognized field name 'subtitle'"#,
        ),
        (
            Method::POST,
            "/v1/shelves/3/books",
            r#"{"rating": "high"}"#,
            r#"field "book.rating": expected google.protobuf.Int32Value: invalid digit found in string"#,
        ),
        (
            Method::POST,
            "/v1/shelves/3/books",
            r#"{"metadata": {"a": [nul]}}"#,
            "invalid JSON body: expected ident at line 1 column 24",
        ),
        (
            Method::PUT,
            "/v1/books/5/tags",
            r#"["a", 1]"#,
            r#"field "tags[1]": expected string: invalid type: integer `1`, expected a string"#,
        ),
        (
            Method::POST,
            "/bookstore.v1.Admin/Echo",
            r#"{"counts": {"a": "x"}}"#,
            r#"field "counts.a": expected int64: invalid digit found in string"#,
        ),
        (
            Method::POST,
            "/bookstore.v1.Admin/Echo",
            r#"{"text": "a", "number": 1}"#,
            "invalid JSON body: multiple fields provided for oneof 'choice' at line 1 column 26",
        ),
        (
            Method::POST,
            "/bookstore.v1.Admin/Echo",
            "[1]",
            "invalid JSON body: invalid type: sequence, expected a map at line 1 column 0",
        ),
    ] {
        let e = t.request(&m, pq, body.as_bytes()).unwrap_err();
        assert_eq!(e.http_status(), 400);
        assert_eq!(e.to_string(), want, "{m} {pq} {body}");
    }
}
