//! The deliveries one dispatched call gives its filter: an HTTP or a
//! unary gRPC call's one answer, once it is made; a gRPC stream's events
//! as they come, with what the filter does to the stream between them.

use super::callout::{perform, CallFailed, CallKind, GrpcStream, PendingCall, StreamOp};
use super::filter::Delivery;

/// What is left to deliver of one call.
pub enum CallAnswers {
    /// A call's answer, until it is taken, and whether the call failed.
    One(Option<Delivery>, bool),
    /// A stream's events.
    Stream(Box<GrpcStream>),
}

/// A stream that stays open while one of its events is delivered.
#[derive(Debug, Clone, Copy)]
pub struct LiveStream {
    /// The filter ended its side already: it may not send.
    pub ended: bool,
}

impl CallAnswers {
    /// Makes `call` (an HTTP or a unary gRPC call, to its end), or opens
    /// it (a gRPC stream).
    pub async fn start(call: &PendingCall) -> CallAnswers {
        match call.kind {
            CallKind::Http | CallKind::Grpc => {
                let result = perform(call).await;
                let failed = matches!(result, Err(CallFailed::Failed | CallFailed::TimedOut));
                let delivery = Delivery::of(call.kind, result);
                CallAnswers::One(Some(delivery), failed)
            }
            CallKind::GrpcStream => CallAnswers::Stream(Box::new(GrpcStream::open(call).await)),
        }
    }

    /// Whether the call failed (could not be made, broke, timed out), for
    /// the tenant's failed callouts: known once all is delivered.
    pub fn failed(&self) -> bool {
        match self {
            CallAnswers::One(_, failed) => *failed,
            CallAnswers::Stream(stream) => stream.failed(),
        }
    }

    /// The next delivery, and, while a stream stays open during it, what
    /// the filter may do to it (the stream's state); None when all is
    /// delivered.
    pub async fn next(&mut self) -> Option<(Delivery, Option<LiveStream>)> {
        match self {
            CallAnswers::One(answer, _) => answer.take().map(|delivery| (delivery, None)),
            CallAnswers::Stream(stream) => {
                let event = stream.next().await?;
                let live = (!stream.is_over()).then(|| LiveStream {
                    ended: stream.ended(),
                });
                Some((Delivery::of_event(event), live))
            }
        }
    }

    /// Does what the filter did to the stream in its last callback: sends
    /// go out in order; a cancel resets it (nothing more is delivered).
    pub async fn apply(&mut self, ops: Vec<StreamOp>) {
        let CallAnswers::Stream(stream) = self else {
            return;
        };
        for op in ops {
            match op {
                StreamOp::Send(frame, end) => {
                    // A send the stream cannot take is lost, as Envoy's
                    // is once the stream is reset; its close says why.
                    let _ = stream.send(frame, end).await;
                }
                StreamOp::Cancel => {
                    stream.cancel();
                    return;
                }
            }
        }
    }
}
