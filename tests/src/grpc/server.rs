//! A tonic implementation of the test services, answering from the request
//! so the tests can see what the transcoder sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use prost_types::{ListValue, Struct, Timestamp, value::Kind};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::pb::{
    self, Book, CreateBookRequest, DeleteBookRequest, EchoRequest, File, GetBookRequest,
    GetFileRequest, ListBooksRequest, ListBooksResponse, PublishBookRequest, TagBookRequest,
};

#[derive(Debug, Default)]
pub struct Bookstore;

/// Streams of the shelves in here stop after their first message until
/// their gate is notified (see [`hold_after_first`]).
static GATES: std::sync::Mutex<BTreeMap<i64, Arc<tokio::sync::Notify>>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The next `StreamBooks` call for `shelf` sends its first book, then
/// waits until the returned gate is notified before it sends the rest: a
/// test sees the first message arrive while the stream is still open.
pub fn hold_after_first(shelf: i64) -> Arc<tokio::sync::Notify> {
    let gate = Arc::new(tokio::sync::Notify::new());
    GATES.lock().unwrap().insert(shelf, gate.clone());
    gate
}

/// `StreamBooks` for this shelf ends with `DATA_LOSS` after its books.
pub const FAIL_AFTER_FIRST: i64 = 666;

fn string_value(s: impl Into<String>) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

#[tonic::async_trait]
impl pb::bookstore_server::Bookstore for Bookstore {
    async fn get_book(&self, req: Request<GetBookRequest>) -> Result<Response<Book>, Status> {
        let r = req.into_inner();
        let mut metadata = Struct::default();
        metadata.fields.insert(
            "ids".into(),
            prost_types::Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: r.ids.iter().map(|i| string_value(i.to_string())).collect(),
                })),
            },
        );
        metadata.fields.insert(
            "include_metadata".into(),
            prost_types::Value {
                kind: Some(Kind::BoolValue(r.include_metadata)),
            },
        );
        Ok(Response::new(Book {
            id: r.book,
            shelf_id: r.shelf.map(|s| s.id).unwrap_or_default(),
            title: r.note.unwrap_or_else(|| "Dune".into()),
            genre: r
                .genres
                .first()
                .copied()
                .unwrap_or(pb::Genre::Fiction as i32),
            publish_time: r.as_of.or(Some(Timestamp {
                seconds: -139_968_000,
                nanos: 0,
            })),
            read_time: Some(prost_types::Duration {
                seconds: 36_000,
                nanos: 500_000_000,
            }),
            rating: Some(5),
            metadata: Some(metadata),
            tags: r.read_mask.map(|m| m.paths).unwrap_or_default(),
            author_name: "Frank Herbert".into(),
            page_count: u64::MAX,
        }))
    }

    async fn get_featured_book(&self, _: Request<()>) -> Result<Response<Book>, Status> {
        Ok(Response::new(Book {
            title: "Featured".into(),
            ..Default::default()
        }))
    }

    async fn create_book(&self, req: Request<CreateBookRequest>) -> Result<Response<Book>, Status> {
        let r = req.into_inner();
        let mut book = r
            .book
            .ok_or_else(|| Status::invalid_argument("book is required"))?;
        book.shelf_id = r.shelf;
        if !r.request_id.is_empty() {
            book.tags.push(r.request_id);
        }
        Ok(Response::new(book))
    }

    async fn publish_book(
        &self,
        req: Request<PublishBookRequest>,
    ) -> Result<Response<Book>, Status> {
        let r = req.into_inner();
        Ok(Response::new(Book {
            id: r.print_run,
            title: r.name,
            genre: r.genre,
            publish_time: r.publish_time,
            read_time: r.embargo,
            metadata: r.labels,
            tags: r.note.into_iter().collect(),
            ..Default::default()
        }))
    }

    async fn tag_book(&self, req: Request<TagBookRequest>) -> Result<Response<Book>, Status> {
        let r = req.into_inner();
        Ok(Response::new(Book {
            id: r.book,
            tags: r.tags,
            ..Default::default()
        }))
    }

    async fn list_books(
        &self,
        req: Request<ListBooksRequest>,
    ) -> Result<Response<ListBooksResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(ListBooksResponse {
            books: books(r.shelf, r.page_size).collect(),
            next_page_token: "next".into(),
        }))
    }

    type StreamBooksStream = Pin<Box<dyn Stream<Item = Result<Book, Status>> + Send + 'static>>;

    async fn stream_books(
        &self,
        req: Request<ListBooksRequest>,
    ) -> Result<Response<Self::StreamBooksStream>, Status> {
        let r = req.into_inner();
        if r.page_size < 0 {
            return Err(Status::out_of_range("page_size must not be negative"));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let all: Vec<Book> = books(r.shelf, r.page_size).collect();
        let gate = GATES.lock().unwrap().remove(&r.shelf);
        tokio::spawn(async move {
            for (i, book) in all.into_iter().enumerate() {
                if i == 1
                    && let Some(gate) = &gate
                {
                    // Held after the first message until the test says.
                    gate.notified().await;
                }
                if tx.send(Ok(book)).await.is_err() {
                    return;
                }
            }
            if r.shelf == FAIL_AFTER_FIRST {
                let _ = tx
                    .send(Err(Status::data_loss("the shelf fell over mid-stream")))
                    .await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delete_book(&self, req: Request<DeleteBookRequest>) -> Result<Response<()>, Status> {
        let name = req.into_inner().name;
        // One error per status, for the mapping tests:
        // shelves/1/books/<code number> answers that code.
        if let Some(code) = name
            .strip_prefix("shelves/1/books/")
            .and_then(|n| n.parse::<i32>().ok())
        {
            let code = tonic::Code::from_i32(code);
            return Err(Status::new(code, format!("status {code:?} as asked")));
        }
        if name == "shelves/2/books/detailed" {
            // With details: a Book the descriptor set knows, and a type it does not.
            use prost::Message as _;
            let detail = |type_url: &str, value: Vec<u8>| prost_types::Any {
                type_url: type_url.into(),
                value,
            };
            let status = RpcStatus {
                code: tonic::Code::FailedPrecondition as i32,
                message: "the book is checked out".into(),
                details: vec![
                    detail(
                        "type.googleapis.com/bookstore.v1.Book",
                        Book {
                            id: 7,
                            title: "Dune".into(),
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    ),
                    detail("type.googleapis.com/example.Unknown", vec![1, 2, 3]),
                ],
            };
            return Err(Status::with_details(
                tonic::Code::FailedPrecondition,
                "the book is checked out",
                status.encode_to_vec().into(),
            ));
        }
        Err(Status::not_found(format!(
            "book \"{name}\" not found — déjà vu 100%"
        )))
    }

    async fn get_file(&self, req: Request<GetFileRequest>) -> Result<Response<File>, Status> {
        let path = req.into_inner().path;
        Ok(Response::new(File {
            content: path.clone().into_bytes(),
            path,
        }))
    }

    async fn check(&self, _: Request<()>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

/// `google.rpc.Status`, as `grpc-status-details-bin` carries it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

fn books(shelf: i64, n: i32) -> impl Iterator<Item = Book> {
    (1..=i64::from(n)).map(move |id| Book {
        id,
        shelf_id: shelf,
        title: format!("Book {id}"),
        genre: pb::Genre::Science as i32,
        ..Default::default()
    })
}

#[derive(Debug, Default)]
pub struct Admin;

#[tonic::async_trait]
impl pb::admin_server::Admin for Admin {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoRequest>, Status> {
        Ok(Response::new(req.into_inner()))
    }
}

/// Starts the server on an ephemeral loopback port.
pub async fn spawn() -> SocketAddr {
    spawn_on("127.0.0.1:0".parse().unwrap()).await
}

/// Starts the server on `addr` (the benchmark's upstream runs it on a
/// fixed port: `bookstore-grpc`).
pub async fn spawn_on(addr: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(pb::bookstore_server::BookstoreServer::new(Bookstore))
            .add_service(pb::admin_server::AdminServer::new(Admin))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    addr
}
