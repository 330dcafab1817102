//! The facade a gateway filter uses: descriptors in, per-request
//! transcoding out.

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::descriptor;
use crate::error::{ConfigError, TranscodeError};
use crate::frame;
use crate::request::{self, RequestOptions};
use crate::response::{ResponseOptions, ResponseTranscoder};
use crate::router::{Route, Router};

#[derive(Debug, Clone, Default)]
pub struct TranscoderOptions {
    /// The services routed (full names); `None`: every service in the set.
    pub services: Option<Vec<String>>,
    pub request: RequestOptions,
    pub response: ResponseOptions,
}

/// Routes and descriptors for one FileDescriptorSet.
#[derive(Debug, Clone)]
pub struct Transcoder {
    pool: DescriptorPool,
    router: Router,
    options: TranscoderOptions,
}

/// A transcoded request, ready to send upstream.
#[derive(Debug)]
pub struct GrpcRequest<'t> {
    pub route: &'t Route,
    pub message: DynamicMessage,
}

impl GrpcRequest<'_> {
    /// The HTTP/2 `:path`, `/package.Service/Method`.
    pub fn path(&self) -> &str {
        self.route.grpc_path()
    }

    /// The request body: one gRPC frame.
    pub fn body(&self) -> Bytes {
        frame::encode_frame(0, &self.message.encode_to_vec())
    }
}

impl Transcoder {
    pub fn from_descriptor_set(
        bytes: &[u8],
        options: TranscoderOptions,
    ) -> Result<Self, ConfigError> {
        Self::new(descriptor::load_descriptor_set(bytes)?, options)
    }

    pub fn new(pool: DescriptorPool, options: TranscoderOptions) -> Result<Self, ConfigError> {
        let router = Router::from_services(&pool, options.services.as_deref())?;
        Ok(Transcoder {
            pool,
            router,
            options,
        })
    }

    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    pub fn options(&self) -> &TranscoderOptions {
        &self.options
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Transcodes one buffered HTTP request. `path_and_query` is the raw
    /// request target (`/v1/shelves/1/books/2?view=FULL`).
    pub fn request(
        &self,
        method: &http::Method,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<GrpcRequest<'_>, TranscodeError> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let m = self.router.find(method, path)?;
        let message = request::build_request(&m, query, body, &self.options.request)?;
        Ok(GrpcRequest {
            route: m.route,
            message,
        })
    }

    /// A response transcoder for a route this transcoder returned.
    pub fn response(&self, route: &Route) -> ResponseTranscoder {
        ResponseTranscoder::new(route, self.options.response.clone())
    }
}
