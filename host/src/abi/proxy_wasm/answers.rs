//! The deliveries one dispatched call gives its filter: an HTTP or a
//! unary gRPC call's one answer, once it is made; a gRPC stream's events
//! as they come, with what the filter does to the stream between them.

use super::callout::{perform, CallFailed, CallKind, GrpcStream, PendingCall, StreamOp};
use super::filter::Delivery;

/// What is left to deliver of one call.
pub enum CallAnswers {
    /// A call's answer, until it is taken.
    One(Option<Delivery>),
    /// A stream's events.
    Stream(Box<GrpcStream>),
}

impl CallAnswers {
    /// Makes `call` (an HTTP or a unary gRPC call, to its end), or opens
    /// it (a gRPC stream). Also says whether the call failed to be made
    /// (for the tenant's failure count).
    pub async fn start(call: &PendingCall) -> (CallAnswers, bool) {
        match call.kind {
            CallKind::Http | CallKind::Grpc => {
                let result = perform(call).await;
                let failed = matches!(result, Err(CallFailed::Failed | CallFailed::TimedOut));
                (
                    CallAnswers::One(Some(Delivery::of(call.kind, result))),
                    failed,
                )
            }
            CallKind::GrpcStream => {
                let stream = GrpcStream::open(call).await;
                let failed = stream.failed_to_open();
                (CallAnswers::Stream(Box::new(stream)), failed)
            }
        }
    }

    /// The next delivery, and whether the stream stays open during it (the
    /// filter may then send on it); None when all is delivered.
    pub async fn next(&mut self) -> Option<(Delivery, bool)> {
        match self {
            CallAnswers::One(answer) => answer.take().map(|delivery| (delivery, false)),
            CallAnswers::Stream(stream) => {
                let event = stream.next().await?;
                let open = !stream.is_over();
                Some((Delivery::of_event(event), open))
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
