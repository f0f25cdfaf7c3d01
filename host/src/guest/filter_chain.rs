//! A request's run through its tenant's proxy-wasm filters, as Envoy's
//! filter manager iterates its chain: the request headers in filter order
//! (with the HTTP calls a filter waits for), the response headers last
//! filter first, the bodies, and the end of each filter's HTTP context.
//! The chain holds each filter beside the HTTP context it opened for this
//! request; every callback goes through [`GuestCall`].

use std::net::SocketAddr;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::abi::proxy_wasm::{
    BodyError, BodyOutcome, CallAnswers, ConnectionFacts, Direction, FilterStream, Paused,
    PendingCall, RequestOutcome, VmLease, MAX_CHAINED_ANSWERS,
};
use crate::abi::HookFailure;
use crate::guest::guest_call::{CallFailure, CallName, Guest, GuestCall, Stage, Stop};
use crate::tenancy::tenants::{Tenant, TenantFilter};

const ON_REQUEST_HEADERS: &str = "proxy_on_request_headers";
const ON_RESPONSE_HEADERS: &str = "proxy_on_response_headers";
const ON_RESPONSE_TRAILERS: &str = "proxy_on_response_trailers";
const ON_LOG: &str = "proxy_on_log";

/// The filters of one request, each with its HTTP context.
#[derive(Default)]
pub(crate) struct FilterChain {
    links: Vec<Link>,
    /// The instance each of the tenant's filter VMs lent the request, by
    /// [`TenantFilter::vm`]: entries sharing a VM open their contexts in
    /// one instance.
    leases: Vec<VmLease>,
    /// A filter removed the request's `Content-Length`: its body goes
    /// upstream by chunks.
    request_reframed: bool,
    /// Each direction's body as it leaves the chain, by [`Direction`].
    bodies: [BodyCount; 2],
}

/// One filter of the chain and its HTTP context for this request; None
/// once it was skipped or faulted.
struct Link {
    filter: TenantFilter,
    stream: Option<FilterStream>,
    /// Bytes given to the filter and released by it, by [`Direction`].
    body_bytes: [(u64, u64); 2],
}

/// A body's length as its framing declares it, and what the chain has
/// let go of it so far.
#[derive(Default, Clone, Copy)]
struct BodyCount {
    declared: Option<u64>,
    sent: u64,
}

/// What the request headers' callbacks decided.
pub(crate) enum ChainVerdict {
    /// Every filter let the request go on.
    Continue,
    /// A filter answered the request itself: send this. It has passed
    /// back through the response callbacks of the filters before it.
    Answer(Box<ResponseHeader>, Bytes),
}

impl FilterChain {
    /// Whether the request has no filters (left).
    pub(crate) fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Whether one of the live filters reads `direction`'s bodies.
    pub(crate) fn reads_bodies(&self, direction: Direction) -> bool {
        self.links
            .iter()
            .any(|link| link.stream.is_some() && link.filter.module.reads_body(direction))
    }

    /// Whether a filter removed the request's `Content-Length` in its
    /// headers callback: the body then goes upstream by chunks.
    pub(crate) fn request_reframed(&self) -> bool {
        self.request_reframed
    }

    /// `direction`'s body goes on with `Content-Length: length` (None:
    /// by chunks, or it ends with the connection): what the filters let
    /// go of it must come to that length.
    pub(crate) fn expect_body(&mut self, direction: Direction, length: Option<u64>) {
        self.bodies[direction as usize] = BodyCount {
            declared: length,
            sent: 0,
        };
    }

    /// The tenant's filters on the request headers, in order: each opens
    /// an HTTP context (in its VM's instance, which the request holds
    /// until it ends) and
    /// sees `request`, which it may change, answer, or pause for HTTP
    /// calls. `connection` is what is known of the client's connection.
    pub(crate) async fn on_request_headers(
        &mut self,
        tenant: &Tenant,
        request: &mut RequestHeader,
        connection: &ConnectionFacts,
    ) -> Result<ChainVerdict, Stop> {
        self.links = tenant
            .filters
            .iter()
            .map(|filter| Link {
                filter: filter.clone(),
                stream: None,
                body_bytes: Default::default(),
            })
            .collect();
        let vms = tenant.filters.iter().map(|f| f.vm + 1).max().unwrap_or(0);
        self.leases = std::iter::repeat_with(VmLease::default).take(vms).collect();
        for index in 0..self.links.len() {
            // An earlier filter may have changed the request's framing.
            let end_of_stream = !has_body(request);
            let reframed = &mut self.request_reframed;
            let Link { filter, stream, .. } = &mut self.links[index];
            let lease = &mut self.leases[filter.vm];
            let call = GuestCall::new(
                tenant,
                Guest::filter(filter),
                CallName::Callback(ON_REQUEST_HEADERS),
                Stage::Headers,
            );
            let module = &filter.module;
            let result = match call.admit() {
                Ok(permit) => {
                    let opened = async {
                        let mut opened = module.begin(lease, request, connection, &permit).await?;
                        if *reframed {
                            opened.reframe_request();
                        }
                        let outcome = module
                            .on_request_headers(lease, &mut opened, request, end_of_stream, &permit)
                            .await
                            .map_err(HookFailure::Fault);
                        *stream = Some(opened).filter(FilterStream::active);
                        outcome
                    };
                    let result = opened.await;
                    call.finish(result, permit)
                }
                Err(failure) => Err(failure),
            };
            let outcome = match result {
                Ok(RequestOutcome::Calls(calls)) => {
                    let paused = Paused::Request(request);
                    deliver_calls(tenant, filter, lease, stream, paused, calls).await?
                }
                Ok(outcome) => outcome,
                Err(failure) => {
                    *stream = None;
                    call.settle(failure)?;
                    RequestOutcome::Continue
                }
            };
            // A call's answer may have removed Content-Length too.
            *reframed |= stream.as_ref().is_some_and(FilterStream::request_reframed);
            closed(filter, stream)?;
            if let RequestOutcome::Answer(mut response, body) = outcome {
                log::info!(
                    "filter {}: answered the request with {}",
                    filter.module.name(),
                    response.status.as_u16()
                );
                // Back through this filter and those before it.
                self.on_response_headers(tenant, &mut response, index + 1)
                    .await?;
                return Ok(ChainVerdict::Answer(response, body));
            }
        }
        Ok(ChainVerdict::Continue)
    }

    /// The request went to `upstream`: the filters' `upstream.address`.
    pub(crate) fn connected_to(&mut self, upstream: SocketAddr) {
        for stream in self
            .links
            .iter_mut()
            .filter_map(|link| link.stream.as_mut())
        {
            stream.connected_to(upstream);
        }
    }

    /// The response callbacks of the first `count` filters, last first,
    /// on `response` (the upstream's, or a local answer).
    pub(crate) async fn on_response_headers(
        &mut self,
        tenant: &Tenant,
        response: &mut ResponseHeader,
        count: usize,
    ) -> Result<(), Stop> {
        let count = count.min(self.links.len());
        for link in self.links[..count].iter_mut().rev() {
            let Link { filter, stream, .. } = link;
            let lease = &mut self.leases[filter.vm];
            let Some(open) = stream.as_mut() else {
                continue;
            };
            // A later filter may have changed the response's framing.
            let end_of_stream = !response_has_body(response);
            let call = GuestCall::new(
                tenant,
                Guest::filter(filter),
                CallName::Callback(ON_RESPONSE_HEADERS),
                Stage::Headers,
            );
            let result = match call.admit() {
                Ok(permit) => {
                    let result = filter
                        .module
                        .on_response_headers(lease, open, response, end_of_stream, &permit)
                        .await
                        .map_err(HookFailure::Fault);
                    call.finish(result, permit)
                }
                Err(failure) => Err(failure),
            };
            match result {
                Ok(RequestOutcome::Calls(calls)) => {
                    closed(filter, stream)?;
                    let paused = Paused::Response(response);
                    // A local answer here is not sent (see
                    // `response_outcome`): the outcome only says on.
                    deliver_calls(tenant, filter, lease, stream, paused, calls).await?;
                }
                Ok(_) => {}
                Err(failure) => {
                    drop_on_failure(stream, &failure);
                    call.settle(failure)?;
                }
            }
            closed(filter, stream)?;
        }
        Ok(())
    }

    /// The filters' `proxy_on_response_trailers`, last first, on the
    /// response's trailers. A failure fails the response (it is under
    /// way: it is cut), or skips the filter under `fail_open`.
    pub(crate) async fn on_response_trailers(
        &mut self,
        tenant: &Tenant,
        trailers: &mut http::HeaderMap,
    ) -> Result<(), Stop> {
        for link in self.links.iter_mut().rev() {
            let Link { filter, stream, .. } = link;
            let lease = &mut self.leases[filter.vm];
            let Some(open) = stream.as_mut() else {
                continue;
            };
            let call = GuestCall::new(
                tenant,
                Guest::filter(filter),
                CallName::Callback(ON_RESPONSE_TRAILERS),
                Stage::Headers,
            );
            let result = match call.admit() {
                Ok(permit) => {
                    let result = filter
                        .module
                        .on_response_trailers(lease, open, trailers, &permit)
                        .await
                        .map_err(HookFailure::Fault);
                    call.finish(result, permit)
                }
                Err(failure) => Err(failure),
            };
            if let Err(failure) = result {
                drop_on_failure(stream, &failure);
                call.settle(failure)?;
            }
        }
        Ok(())
    }

    /// Runs a piece of a body through the live filters that read
    /// `direction`'s bodies: in filter order for the request, last first
    /// for the response. What the last one releases replaces the piece; a
    /// filter that buffers stops it (nothing goes on yet). Past the buffer
    /// cap a request gets 413; a response fails (500, or cut if its
    /// headers have left).
    pub(crate) async fn on_body(
        &mut self,
        tenant: &Tenant,
        direction: Direction,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<(), Box<Error>> {
        let callback = match direction {
            Direction::Request => "proxy_on_request_body",
            Direction::Response => "proxy_on_response_body",
        };
        if !self.reads_bodies(direction) {
            return Ok(());
        }
        let mut chunk = body.take().map(|b| b.to_vec()).unwrap_or_default();
        let count = self.links.len();
        for step in 0..count {
            let index = match direction {
                Direction::Request => step,
                Direction::Response => count - 1 - step,
            };
            let Link {
                filter,
                stream,
                body_bytes,
            } = &mut self.links[index];
            let lease = &mut self.leases[filter.vm];
            let Some(open) = stream.as_mut() else {
                continue;
            };
            if !filter.module.reads_body(direction) {
                continue;
            }
            let counted = &mut body_bytes[direction as usize];
            counted.0 += chunk.len() as u64;
            let call = GuestCall::new(
                tenant,
                Guest::filter(filter),
                CallName::Callback(callback),
                Stage::Body(direction),
            );
            let result = match call.admit() {
                Ok(permit) => {
                    let result = filter
                        .module
                        .on_body(lease, open, direction, &chunk, end_of_stream, &permit)
                        .await;
                    // Past the buffer cap is not the filter's fault.
                    let result = match result {
                        Ok(outcome) => Ok(Some(outcome)),
                        Err(BodyError::TooLarge) => Ok(None),
                        Err(BodyError::Fault(fault)) => Err(HookFailure::Fault(fault)),
                    };
                    call.finish(result, permit)
                }
                Err(failure) => Err(failure),
            };
            if let Err(Stop::Failed(error)) = closed(filter, stream) {
                return Err(error);
            }
            match result {
                Ok(Some(BodyOutcome::Release(released))) => {
                    counted.1 += released.len() as u64;
                    chunk = released;
                }
                Ok(Some(BodyOutcome::Buffer)) => {
                    hold_back(direction, body);
                    return Ok(());
                }
                Ok(None) => {
                    let status = match direction {
                        Direction::Request => 413,
                        Direction::Response => 500,
                    };
                    return Error::e_explain(
                        HTTPStatus(status),
                        format!("filter {}: body over the buffer cap", filter.module.name()),
                    );
                }
                Err(failure) => {
                    if let (CallFailure::Hook(_), Some(open)) = (&failure, stream.as_mut()) {
                        // Skipped under fail_open, the filter lets go of
                        // what it held, this piece included, as it came.
                        chunk = open.take_body(direction);
                    }
                    drop_on_failure(stream, &failure);
                    call.settle(failure).map_err(|stop| match stop {
                        Stop::Failed(error) => error,
                        // A body stage turns refusals into errors itself.
                        Stop::Refused { .. } => {
                            Error::explain(InternalError, "tenant over its guest budget")
                        }
                    })?;
                }
            }
        }
        self.check_length(direction, chunk.len(), end_of_stream)?;
        if chunk.is_empty() {
            hold_back(direction, body);
        } else {
            *body = Some(Bytes::from(chunk));
        }
        Ok(())
    }

    /// Counts `sent` more bytes of `direction`'s body: past the length its
    /// `Content-Length` declares, or short of it at the end, a filter
    /// changed the body's length without removing the field in its
    /// headers callback. The request fails rather than leave mis-framed
    /// (500 while the response headers are held; else the connection is
    /// cut), naming the filter whose output differs from its input.
    fn check_length(
        &mut self,
        direction: Direction,
        sent: usize,
        end_of_stream: bool,
    ) -> Result<(), Box<Error>> {
        let count = &mut self.bodies[direction as usize];
        let Some(declared) = count.declared else {
            return Ok(());
        };
        count.sent += sent as u64;
        let total = count.sent;
        if total <= declared && (total == declared || !end_of_stream) {
            return Ok(());
        }
        let culprit = self
            .links
            .iter()
            .filter(|link| link.stream.is_some())
            .find(|link| {
                let (given, released) = link.body_bytes[direction as usize];
                released > given || (end_of_stream && released != given)
            })
            .map_or("a filter", |link| link.filter.module.name());
        let (noun, callback) = match direction {
            Direction::Request => ("request", "proxy_on_request_headers"),
            Direction::Response => ("response", "proxy_on_response_headers"),
        };
        let why = format!(
            "filter {culprit} changed the {noun} body's length without removing its \
             Content-Length in {callback} (Content-Length: {declared}; {total} bytes \
             {})",
            if end_of_stream { "in all" } else { "so far" }
        );
        log::warn!("{why}");
        Error::e_explain(HTTPStatus(500), why)
    }

    /// Ends every filter's HTTP context (`proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete`) with `response` as the last response seen, and
    /// gives each VM's instance back after its last entry: healthy ones
    /// are kept. A failure is logged.
    pub(crate) async fn end(&mut self, tenant: &Tenant, response: Option<&ResponseHeader>) {
        let links = std::mem::take(&mut self.links);
        let last_of_vm: Vec<bool> = (0..links.len())
            .map(|i| {
                links[i + 1..]
                    .iter()
                    .all(|l| l.filter.vm != links[i].filter.vm)
            })
            .collect();
        for (Link { filter, stream, .. }, last) in links.into_iter().zip(last_of_vm) {
            let lease = &mut self.leases[filter.vm];
            if let Some(stream) = stream {
                end_context(tenant, &filter, lease, stream, response).await;
            }
            if last {
                filter.module.end_lease(lease);
            }
        }
    }
}

/// Ends `filter`'s HTTP context for the request, admitted by the budget
/// (over it, the context is dropped with its instance).
async fn end_context(
    tenant: &Tenant,
    filter: &TenantFilter,
    lease: &mut VmLease,
    stream: FilterStream,
    response: Option<&ResponseHeader>,
) {
    let call = GuestCall::new(
        tenant,
        Guest::filter(filter),
        CallName::Callback(ON_LOG),
        Stage::End,
    );
    let result = match call.admit() {
        Ok(permit) => {
            let result = filter.module.end(lease, stream, response, &permit).await;
            call.finish(result.map_err(HookFailure::Fault), permit)
        }
        // Over budget the context is left open: its instance is not
        // reused once the VM's other entries are done with it.
        Err(failure) => Err(failure),
    };
    if let Err(failure) = result {
        // At the end a failure only gets its log line.
        let _ = call.settle(failure);
    }
}

/// Makes the calls `filter` paused the request or the response for, one
/// after another, each from this request's task with no guest slot held
/// while it waits, and delivers each answer (each event of a gRPC
/// stream, with what the filter sends on it in between); until the filter
/// answers, goes on, or fails (then its policy decides, and its context is
/// gone).
async fn deliver_calls(
    tenant: &Tenant,
    filter: &TenantFilter,
    lease: &mut VmLease,
    stream: &mut Option<FilterStream>,
    mut paused: Paused<'_>,
    mut calls: Vec<PendingCall>,
) -> Result<RequestOutcome, Stop> {
    let module = &filter.module;
    for answered in 0.. {
        if calls.is_empty() {
            break;
        }
        if answered == MAX_CHAINED_ANSWERS {
            log::warn!(
                "filter {}: {} calls dropped after {MAX_CHAINED_ANSWERS} answers; \
                 the stream goes on",
                module.name(),
                calls.len()
            );
            break;
        }
        let pending = calls.remove(0);
        let mut answers = CallAnswers::start(&pending).await;
        let failed = |answers: &CallAnswers| {
            if answers.failed() {
                tenant
                    .scope
                    .callout_failed(module.name(), pending.target.address);
            }
        };
        while let Some((delivery, live)) = answers.next().await {
            let call = GuestCall::new(
                tenant,
                Guest::filter(filter),
                CallName::Callback(delivery.callback()),
                Stage::Callout,
            );
            let result = match call.admit() {
                Ok(permit) => {
                    let Some(context) = stream.as_mut() else {
                        return Ok(RequestOutcome::Continue);
                    };
                    let answer = (pending.token, delivery, live);
                    let result = module
                        .on_call_answer(lease, context, answer, &mut paused, &permit)
                        .await
                        .map_err(HookFailure::Fault);
                    call.finish(result, permit)
                }
                Err(failure) => Err(failure),
            };
            match result {
                Ok((outcome, ops)) => {
                    answers.apply(ops).await;
                    match outcome {
                        RequestOutcome::Calls(more) => calls.extend(more),
                        RequestOutcome::Continue => {}
                        // Dropping `answers` resets a stream still open.
                        answer @ RequestOutcome::Answer(..) => {
                            failed(&answers);
                            return Ok(answer);
                        }
                    }
                }
                Err(failure) => {
                    failed(&answers);
                    *stream = None;
                    call.settle(failure)?;
                    return Ok(RequestOutcome::Continue);
                }
            }
        }
        failed(&answers);
    }
    Ok(RequestOutcome::Continue)
}

/// Nothing of `direction`'s body goes on yet. For a request Pingora takes
/// no piece (`None`) as the body's end, and would end the upstream body
/// there: an empty piece is what holds it back. For a response it writes
/// an empty piece (a chunked body's last chunk), so none is given.
fn hold_back(direction: Direction, body: &mut Option<Bytes>) {
    *body = match direction {
        Direction::Request => Some(Bytes::new()),
        Direction::Response => None,
    };
}

/// A filter that reset the stream (`proxy_close_stream`) ends the request:
/// the connection is closed with no response, or the response is cut.
fn closed(filter: &TenantFilter, stream: &Option<FilterStream>) -> Result<(), Stop> {
    if !stream.as_ref().is_some_and(FilterStream::closed) {
        return Ok(());
    }
    let why = format!("filter {}: proxy_close_stream", filter.module.name());
    log::info!("{why}: the stream is reset");
    Err(Stop::Failed(Error::create(
        ConnectionClosed,
        ErrorSource::Downstream,
        Some(why.into()),
        None,
    )))
}

/// A filter whose callback failed is out of the chain for the rest of the
/// request; one refused by the budget keeps its context, to be ended.
fn drop_on_failure(stream: &mut Option<FilterStream>, failure: &CallFailure) {
    if let CallFailure::Hook(_) = failure {
        *stream = None;
    }
}

/// The body length `headers` declare by `Content-Length`, if they do and
/// are not chunked.
pub(crate) fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
}

/// Whether the request has a body to follow its headers.
pub(crate) fn has_body(request: &RequestHeader) -> bool {
    let headers = &request.headers;
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .is_some_and(|length| length > 0)
}

/// Whether a body follows the response's header.
pub(crate) fn response_has_body(response: &ResponseHeader) -> bool {
    let status = response.status.as_u16();
    if status == 204 || status == 304 || status < 200 {
        return false;
    }
    response
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .is_none_or(|length| length > 0)
}
