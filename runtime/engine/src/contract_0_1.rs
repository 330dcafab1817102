//! Contract 0.1 beside 0.2: the host's imports under their 0.1 names, the
//! 0.1 records built from an [`Exchange`], and 0.1 decisions turned into
//! the same outcomes a 0.2 guest's calls produce.
//!
//! Every 0.1 import is the 0.2 import of the same name with the same
//! shapes; the host implements it once (`host.rs`, `services.rs`), and
//! the impls here only convert between the two bindings' types. A 0.1
//! guest is served exactly as before: each call carries the request line,
//! the facts, the headers it declared and (if it asked) the body.

use crate::bindings::v0_1::wasmgate::filter as v1;
use crate::bindings::v0_2::wasmgate::filter as v2;
use crate::edits::{
    self, HeaderOp, Interest, InvalidEdit, MadeResponse, Needs, RequestEdits, ResponseEdits,
};
use crate::exchange::{Exchange, FilterCarry, RequestOutcome, ResponseOutcome};
use crate::host::HostState;

pub(crate) use v1::types as wit;

/// What a 0.1 filter's `filter-info` declared, checked.
pub(crate) fn needs(info: wit::FilterInfo) -> Result<Needs, String> {
    let interest = |i: wit::HeaderInterest, what: &str| match i {
        wit::HeaderInterest::None => Ok(Interest::None),
        wit::HeaderInterest::All => Ok(Interest::All),
        wit::HeaderInterest::Names(names) => Interest::names(&names, what),
    };
    if info.buffer_response_body && !info.wants_response {
        return Err(
            "buffer-response-body is set but wants-response is not: the body would \
             never be handed to the filter"
                .into(),
        );
    }
    let request_headers = interest(info.request_headers, "request-headers")?;
    Needs {
        on_request: true,
        on_response: info.wants_response,
        request_body: info.buffer_request_body,
        response_body: info.buffer_response_body,
        request_headers_on_response: info.wants_response && request_headers != Interest::None,
        request_headers,
        response_headers: interest(info.response_headers, "response-headers")?,
    }
    .check()
}

/// The 0.1 request record for a call: the request line, the facts, the
/// declared headers, and the body in `on-request` if declared.
pub(crate) fn request_record(ex: &Exchange, needs: &Needs, on_request: bool) -> wit::Request {
    let f = &ex.facts;
    wit::Request {
        method: ex.request.method.as_str().to_owned(),
        scheme: f.scheme.to_owned(),
        authority: ex.authority().to_owned(),
        path_with_query: ex
            .request
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        headers: needs.request_headers.copy(&ex.request.headers),
        body: match (&ex.request_body, on_request && needs.request_body) {
            (Some(b), true) => Some(b.to_vec()),
            _ => None,
        },
        meta: wit::RequestMeta {
            request_id: f.request_id.to_str().unwrap_or_default().to_owned(),
            route: f.route.to_string(),
            client_addr: f.client.to_string(),
            tls: f.tls,
            received_at_ms: f.received_at_ms,
        },
    }
}

/// The 0.1 response record for `on-response`.
pub(crate) fn response_record(ex: &Exchange, needs: &Needs) -> wit::Response {
    let (status, headers) = match &ex.response {
        Some(p) => (p.status.as_u16(), needs.response_headers.copy(&p.headers)),
        None => (0, Vec::new()),
    };
    wit::Response {
        status,
        headers,
        body: match (&ex.response_body, needs.response_body) {
            (Some(b), true) => Some(b.to_vec()),
            _ => None,
        },
    }
}

/// 0.1 header edits as ops, in 0.1's order: every remove, then every set
/// (several for one name: the first replaces, the rest add), then every
/// append.
fn header_ops(e: wit::HeaderEdits) -> Result<Vec<HeaderOp>, InvalidEdit> {
    let mut ops = Vec::with_capacity(e.remove.len() + e.set.len() + e.append.len());
    for n in &e.remove {
        ops.push(HeaderOp::remove(n)?);
    }
    let mut set = std::collections::HashSet::new();
    for (n, v) in &e.set {
        let op = HeaderOp::set(n, v)?;
        ops.push(match op {
            HeaderOp::Set(name, value) if !set.insert(name.clone()) => {
                HeaderOp::Append(name, value)
            }
            op => op,
        });
    }
    for (n, v) in &e.append {
        ops.push(HeaderOp::append(n, v)?);
    }
    Ok(ops)
}

fn request_edits(e: wit::RequestEdits) -> Result<RequestEdits, InvalidEdit> {
    Ok(RequestEdits {
        headers: header_ops(e.headers)?,
        method: e.method.as_deref().map(edits::parse_method).transpose()?,
        path: e
            .path_with_query
            .as_deref()
            .map(edits::parse_path)
            .transpose()?,
        cluster: e.cluster,
        body: e.body,
    })
}

fn made(r: wit::Response) -> Result<MadeResponse, InvalidEdit> {
    edits::made_response(r.status, &r.headers, r.body)
}

/// A 0.1 `on-request` decision as an outcome; its context goes to `carry`.
pub(crate) fn request_outcome(d: wit::RequestDecision, carry: &mut FilterCarry) -> RequestOutcome {
    match d {
        wit::RequestDecision::Proceed(p) => match request_edits(p.edits) {
            Ok(edits) => {
                carry.context = p.context;
                RequestOutcome::Proceed(edits)
            }
            Err(e) => RequestOutcome::Invalid(e),
        },
        wit::RequestDecision::Respond(r) => match made(r) {
            Ok(m) => RequestOutcome::Respond(m),
            Err(e) => RequestOutcome::Invalid(e),
        },
    }
}

/// A 0.1 `on-response` decision as an outcome.
pub(crate) fn response_outcome(d: wit::ResponseDecision) -> ResponseOutcome {
    let edits = |e: wit::ResponseEdits| -> Result<ResponseEdits, InvalidEdit> {
        Ok(ResponseEdits {
            headers: header_ops(e.headers)?,
            status: e.status.map(edits::final_status).transpose()?,
            body: e.body,
        })
    };
    match d {
        wit::ResponseDecision::Proceed(e) => match edits(e) {
            Ok(e) => ResponseOutcome::Proceed(e),
            Err(e) => ResponseOutcome::Invalid(e),
        },
        wit::ResponseDecision::Replace(r) => match made(r) {
            Ok(m) => ResponseOutcome::Replace(m),
            Err(e) => ResponseOutcome::Invalid(e),
        },
    }
}

// The imports under their 0.1 names: each delegates to the 0.2 import.

impl wit::Host for HostState {}

fn level(l: wit::LogLevel) -> v2::types::LogLevel {
    match l {
        wit::LogLevel::Trace => v2::types::LogLevel::Trace,
        wit::LogLevel::Debug => v2::types::LogLevel::Debug,
        wit::LogLevel::Info => v2::types::LogLevel::Info,
        wit::LogLevel::Warn => v2::types::LogLevel::Warn,
        wit::LogLevel::Error => v2::types::LogLevel::Error,
    }
}

impl v1::log::Host for HostState {
    fn log(&mut self, l: wit::LogLevel, message: String) {
        v2::log::Host::log(self, level(l), message)
    }
    fn enabled(&mut self, l: wit::LogLevel) -> bool {
        v2::log::Host::enabled(self, level(l))
    }
}

fn kv_error(e: v2::kv::KvError) -> v1::kv::KvError {
    match e {
        v2::kv::KvError::TooLarge => v1::kv::KvError::TooLarge,
        v2::kv::KvError::QuotaExceeded => v1::kv::KvError::QuotaExceeded,
        v2::kv::KvError::NotANumber => v1::kv::KvError::NotANumber,
    }
}

impl v1::kv::Host for HostState {
    fn get(&mut self, key: String) -> Option<v1::kv::Entry> {
        v2::kv::Host::get(self, key).map(|e| v1::kv::Entry {
            value: e.value,
            version: e.version,
        })
    }
    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<u64, v1::kv::KvError> {
        v2::kv::Host::set(self, key, value, ttl_ms).map_err(kv_error)
    }
    fn compare_and_set(
        &mut self,
        key: String,
        expected: u64,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, v1::kv::KvError> {
        v2::kv::Host::compare_and_set(self, key, expected, value, ttl_ms).map_err(kv_error)
    }
    fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, v1::kv::KvError> {
        v2::kv::Host::increment(self, key, delta, ttl_ms).map_err(kv_error)
    }
    fn delete(&mut self, key: String) -> bool {
        v2::kv::Host::delete(self, key)
    }
}

impl v1::rate_limit::Host for HostState {
    fn take(
        &mut self,
        key: String,
        capacity: u64,
        refill: u64,
        cost: u64,
    ) -> v1::rate_limit::Verdict {
        let v = v2::rate_limit::Host::take(self, key, capacity, refill, cost);
        v1::rate_limit::Verdict {
            allowed: v.allowed,
            remaining: v.remaining,
            retry_after_ms: v.retry_after_ms,
            reset_ms: v.reset_ms,
        }
    }
}

impl v1::config::Host for HostState {
    fn get(&mut self, name: String) -> Option<String> {
        v2::config::Host::get(self, name)
    }
}

impl v1::crypto::Host for HostState {
    fn verify_rsa_pkcs1_sha256(&mut self, key: Vec<u8>, message: Vec<u8>, sig: Vec<u8>) -> bool {
        v2::crypto::Host::verify_rsa_pkcs1_sha256(self, key, message, sig)
    }
    fn verify_ecdsa_p256_sha256(&mut self, key: Vec<u8>, message: Vec<u8>, sig: Vec<u8>) -> bool {
        v2::crypto::Host::verify_ecdsa_p256_sha256(self, key, message, sig)
    }
}

impl v1::metrics::Host for HostState {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, delta: u64) {
        v2::metrics::Host::counter_add(self, name, labels, delta)
    }
    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        v2::metrics::Host::gauge_set(self, name, labels, value)
    }
    fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        v2::metrics::Host::histogram_observe(self, name, labels, value)
    }
}

fn outbound_request(r: v1::outbound::OutboundRequest) -> v2::outbound::OutboundRequest {
    v2::outbound::OutboundRequest {
        cluster: r.cluster,
        method: r.method,
        path_with_query: r.path_with_query,
        headers: r.headers,
        body: r.body,
        timeout_ms: r.timeout_ms,
    }
}

fn outbound_result(
    r: Result<v2::outbound::OutboundResponse, v2::outbound::OutboundError>,
) -> Result<v1::outbound::OutboundResponse, v1::outbound::OutboundError> {
    use v1::outbound::OutboundError as E1;
    use v2::outbound::OutboundError as E2;
    match r {
        Ok(r) => Ok(v1::outbound::OutboundResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }),
        Err(e) => Err(match e {
            E2::UnknownCluster => E1::UnknownCluster,
            E2::BudgetExhausted => E1::BudgetExhausted,
            E2::InvalidRequest(m) => E1::InvalidRequest(m),
            E2::Timeout => E1::Timeout,
            E2::Unavailable(m) => E1::Unavailable(m),
            E2::ResponseTooLarge => E1::ResponseTooLarge,
        }),
    }
}

impl v1::outbound::Host for HostState {
    async fn send(
        &mut self,
        req: v1::outbound::OutboundRequest,
    ) -> Result<v1::outbound::OutboundResponse, v1::outbound::OutboundError> {
        outbound_result(v2::outbound::Host::send(self, outbound_request(req)).await)
    }
    async fn send_all(
        &mut self,
        reqs: Vec<v1::outbound::OutboundRequest>,
    ) -> Vec<Result<v1::outbound::OutboundResponse, v1::outbound::OutboundError>> {
        let reqs = reqs.into_iter().map(outbound_request).collect();
        v2::outbound::Host::send_all(self, reqs)
            .await
            .into_iter()
            .map(outbound_result)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_one_header_edits_keep_their_order_remove_set_append() {
        let ops = header_ops(wit::HeaderEdits {
            remove: vec!["X-B".into()],
            set: vec![("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
            append: vec![("x-a".into(), "3".into())],
        })
        .unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("x-a", http::HeaderValue::from_static("old"));
        h.insert("x-b", http::HeaderValue::from_static("gone"));
        edits::apply_header_ops(&mut h, ops);
        let a: Vec<_> = h
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(a, ["1", "2", "3"]);
        assert!(!h.contains_key("x-b"));
    }

    #[test]
    fn a_bad_zero_one_edit_refuses_the_whole_decision() {
        let mut carry = FilterCarry::default();
        let d = wit::RequestDecision::Proceed(wit::ProceedRequest {
            edits: wit::RequestEdits {
                headers: wit::HeaderEdits {
                    remove: vec![],
                    set: vec![("content-length".into(), "0".into())],
                    append: vec![],
                },
                method: None,
                path_with_query: None,
                cluster: None,
                body: None,
            },
            context: Some(b"c".to_vec()),
        });
        assert!(matches!(
            request_outcome(d, &mut carry),
            RequestOutcome::Invalid(InvalidEdit::Protected(_))
        ));
        assert_eq!(carry.context, None, "nothing of a refused decision is kept");
    }
}
