//! One path for every guest call of both ABIs: the tenant's budget admits
//! it ([`GuestCall::admit`]), it runs under the permit, it is accounted
//! ([`GuestCall::finish`]: metrics and the breaker), and a failure meets
//! the guest's failure policy ([`GuestCall::settle`], the one fail-open
//! rule). The Pingora phases (`proxy.rs`) and the filter chain
//! (`filter_chain.rs`) make every guest call this way.
//!
//! What a refusal by the budget does depends on where the request is
//! ([`Stage`]): before its response began it can be answered with
//! 429/503; on a body it ends the request; at the end the call is dropped.

use std::fmt;

use pingora::prelude::*;

use crate::abi::failure::guest_text;
use crate::abi::hook_table::Hook;
use crate::abi::proxy_wasm::Direction;
use crate::abi::proxy_wasm::FilterModule;
use crate::abi::HookFailure;
use crate::abi::HookFault;
use crate::tenancy::budget::{CallPermit, Throttle};
use crate::tenancy::tenants::{GuestErrorPolicy, Tenant, TenantFilter};

/// The guest a call goes to, as its log lines and failure policy need it.
#[derive(Clone, Copy)]
pub(crate) struct Guest<'t> {
    kind: GuestKind,
    name: &'t str,
    on_error: GuestErrorPolicy,
    /// The filter, when it is one (for `on_error: fail_reload`).
    filter: Option<&'t FilterModule>,
}

/// A tenant's routing module or one of its filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuestKind {
    /// The routing module (ABI v1): failing open skips the hook.
    Module,
    /// A proxy-wasm filter: failing open skips the filter.
    Filter,
}

impl<'t> Guest<'t> {
    /// The tenant's routing module, under the tenant's `on_guest_error`.
    pub(crate) fn module(tenant: &'t Tenant) -> Self {
        Guest {
            kind: GuestKind::Module,
            name: &tenant.label,
            on_error: tenant.on_guest_error,
            filter: None,
        }
    }

    /// One of the tenant's filters, under its own `on_error`.
    pub(crate) fn filter(filter: &'t TenantFilter) -> Self {
        Guest {
            kind: GuestKind::Filter,
            name: filter.module.name(),
            on_error: filter.on_error,
            filter: Some(&filter.module),
        }
    }
}

impl fmt::Debug for Guest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Guest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            GuestKind::Module => write!(f, "module {}", self.name),
            GuestKind::Filter => write!(f, "filter {}", self.name),
        }
    }
}

/// A guest call's name: a hook of ABI v1 or a proxy-wasm callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallName {
    /// A hook of the hook table.
    Hook(Hook),
    /// A proxy-wasm callback, by its export name.
    Callback(&'static str),
}

impl fmt::Display for CallName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallName::Hook(hook) => hook.fmt(f),
            CallName::Callback(name) => f.write_str(name),
        }
    }
}

/// Where in the request a call is made: what a refusal by the budget does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Before the response began: a refusal is answered with 429/503,
    /// except that an open breaker under the tenant's fail-open skips the
    /// call (the guest's policy then decides).
    Headers,
    /// Handing a filter its HTTP call's response: a refusal skips the call.
    Callout,
    /// On a piece of a body: a refusal ends the request, with the
    /// throttle's status on the request body and 500 on the response's.
    Body(Direction),
    /// After the response (logging, ending filters): a refusal drops the
    /// call and a failure is only logged.
    End,
}

/// Why a guest call gave no result.
#[derive(Debug)]
pub(crate) enum CallFailure {
    /// The tenant's budget refused it.
    Refused(Throttle),
    /// It failed, or was skipped.
    Hook(HookFailure),
}

impl From<HookFailure> for CallFailure {
    fn from(failure: HookFailure) -> Self {
        CallFailure::Hook(failure)
    }
}

/// Why a request stops after a guest call.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The budget refused `call` before the response began: the proxy
    /// answers with the throttle's status.
    Refused {
        /// Why.
        throttle: Throttle,
        /// The call not made, for the log line.
        call: CallName,
    },
    /// The request fails with this error (its type gives the status).
    Failed(Box<Error>),
}

/// One guest call: whose, which, and where in the request.
pub(crate) struct GuestCall<'t> {
    tenant: &'t Tenant,
    guest: Guest<'t>,
    name: CallName,
    stage: Stage,
}

impl<'t> GuestCall<'t> {
    /// A call of `name` on the tenant's `guest` at `stage`.
    pub(crate) fn new(tenant: &'t Tenant, guest: Guest<'t>, name: CallName, stage: Stage) -> Self {
        GuestCall {
            tenant,
            guest,
            name,
            stage,
        }
    }

    /// A hook of the tenant's routing module at `stage`.
    pub(crate) fn hook(tenant: &'t Tenant, hook: Hook, stage: Stage) -> Self {
        Self::new(tenant, Guest::module(tenant), CallName::Hook(hook), stage)
    }

    /// Asks the tenant's budget for leave to make the call. The permit
    /// holds a concurrency slot and meters the call; give it back with
    /// [`finish`](Self::finish).
    pub(crate) fn admit(&self) -> Result<CallPermit<'t>, CallFailure> {
        // A filter having its VM replaced takes no new request; those in
        // flight go on with the instances they hold.
        if let (Some(filter), Stage::Headers) = (self.reloading_filter(), self.stage) {
            if filter.reloading_for().is_some() {
                self.tenant.metrics.throttled(Throttle::FilterReloading);
                return Err(CallFailure::Refused(Throttle::FilterReloading));
            }
        }
        // A callout's response goes to the instance its request already
        // holds: it adds no instance, so it is not held to the calls in
        // flight (refusing it would fail a request that was let in).
        let budget = &self.tenant.budget;
        let admitted = match self.stage {
            Stage::Callout => budget.admit_held(),
            _ => budget.admit(),
        };
        admitted.map_err(|throttle| {
            let skipped = CallFailure::Hook(HookFailure::Skipped(throttle.skipped_because()));
            match self.stage {
                Stage::Headers
                    if throttle == Throttle::BreakerOpen
                        && self.tenant.on_guest_error == GuestErrorPolicy::FailOpen =>
                {
                    skipped
                }
                Stage::Headers | Stage::Body(_) => CallFailure::Refused(throttle),
                Stage::Callout | Stage::End => skipped,
            }
        })
    }

    /// Ends an admitted call with its `result`: counts it (guest time,
    /// fault) and frees its slot, telling the breaker whether it faulted.
    pub(crate) fn finish<T>(
        &self,
        result: Result<T, HookFailure>,
        permit: CallPermit<'_>,
    ) -> Result<T, CallFailure> {
        // Counted once, where the VM faulted: not again for each of its
        // other entries that finds its instance gone.
        let lost = matches!(result, Err(HookFailure::Fault(HookFault::VmLost)));
        let fault = match &result {
            Err(HookFailure::Fault(fault)) if !lost => Some(fault),
            _ => None,
        };
        let metrics = &self.tenant.metrics;
        match self.name {
            CallName::Hook(hook) => metrics.hook_call(hook, permit.running(), fault),
            CallName::Callback(callback) => {
                if let Some(fault) = fault {
                    metrics.callback_fault(callback, fault);
                }
            }
        }
        permit.finish(fault.is_some());
        if let Some(filter) = self.reloading_filter() {
            match fault {
                Some(_) => {
                    if let Some(backoff) = filter.fail_for_reload() {
                        log::warn!(
                            "{}: fail_reload: its VM is replaced; new requests get 503 for {} ms",
                            self.guest,
                            backoff.as_millis()
                        );
                    }
                }
                None if !lost => filter.served_after_reload(),
                None => {}
            }
        }
        result.map_err(CallFailure::Hook)
    }

    /// The filter, if the call goes to one under `on_error: fail_reload`.
    fn reloading_filter(&self) -> Option<&'t FilterModule> {
        match self.guest.on_error {
            GuestErrorPolicy::FailReload => self.guest.filter,
            _ => None,
        }
    }

    /// Counts a fault found after the call, in what the guest returned
    /// (a change that cannot be applied, a peer that does not resolve).
    pub(crate) fn fault_after(&self, fault: &HookFault) {
        match self.name {
            CallName::Hook(hook) => self.tenant.metrics.fault(hook, fault),
            CallName::Callback(callback) => self.tenant.metrics.callback_fault(callback, fault),
        }
    }

    /// The guest's failure policy: whether the request goes on past
    /// `failure` (a fault, or a call skipped while the breaker is open,
    /// under fail-open). A refusal by the guest or a host error never does.
    pub(crate) fn fails_open(&self, failure: &HookFailure) -> bool {
        self.guest.on_error == GuestErrorPolicy::FailOpen
            && matches!(failure, HookFailure::Fault(_) | HookFailure::Skipped(_))
    }

    /// Whether a failure the request goes on past gets its log line: every
    /// fault does; a call skipped because the breaker is open does at most
    /// once a second per tenant (the breaker's own lines say when it
    /// opened).
    pub(crate) fn worth_logging(&self, failure: &HookFailure) -> bool {
        !matches!(failure, HookFailure::Skipped(_)) || self.tenant.budget.log_throttle_now()
    }

    /// What the request does after the call failed: goes on (`Ok`: under
    /// fail-open, or at the end, where nothing can change) or stops.
    pub(crate) fn settle(&self, failure: CallFailure) -> Result<(), Stop> {
        let (guest, call) = (self.guest, self.name);
        let failure = match failure {
            CallFailure::Refused(throttle) => return self.refused(throttle),
            CallFailure::Hook(HookFailure::Busy(throttle)) => {
                self.tenant.metrics.throttled(throttle);
                return self.refused(throttle);
            }
            CallFailure::Hook(failure) => failure,
        };
        if self.stage == Stage::End {
            if !matches!(failure, HookFailure::Skipped(_)) {
                log::error!("{guest}: {call} failed: {failure}");
            }
            return Ok(());
        }
        if !self.fails_open(&failure) {
            return Err(Stop::Failed(self.failed(failure)));
        }
        if self.worth_logging(&failure) {
            let skipped = match guest.kind {
                GuestKind::Module => call.to_string(),
                GuestKind::Filter => "filter".to_owned(),
            };
            log::warn!("{guest}: {call} failed: {failure}; fail-open, {skipped} skipped");
        }
        Ok(())
    }

    /// A refusal by the budget, as the stage turns it into a stop.
    fn refused(&self, throttle: Throttle) -> Result<(), Stop> {
        let error = match self.stage {
            Stage::Body(Direction::Request) => Error::explain(
                HTTPStatus(throttle.status()),
                "tenant over its guest budget",
            ),
            Stage::Body(Direction::Response) => {
                Error::explain(InternalError, "tenant over its guest budget mid-response")
            }
            Stage::End => return Ok(()),
            Stage::Headers | Stage::Callout => {
                return Err(Stop::Refused {
                    throttle,
                    call: self.name,
                })
            }
        };
        Err(Stop::Failed(error))
    }

    /// Logs a failure the request does not go on past, with guest, call
    /// and reason, and turns it into the error whose type gives the
    /// client's status.
    pub(crate) fn failed(&self, failure: HookFailure) -> Box<Error> {
        let (guest, call) = (self.guest, self.name);
        match failure {
            HookFailure::Fault(fault) => {
                log::error!("{guest}: {call} failed: {fault}");
                Error::explain(InternalError, format!("{guest}: {call}: {fault}"))
            }
            HookFailure::Refused(refusal) if (400..=599).contains(&refusal.status) => {
                // Pingora logs the error's text too: sanitised once here.
                let message = guest_text(&refusal.message);
                log::info!(
                    "{guest}: {call} refused the request with {}: {message}",
                    refusal.status,
                );
                Error::explain(HTTPStatus(refusal.status), message)
            }
            HookFailure::Refused(refusal) => {
                log::error!(
                    "{guest}: {call} failed: refusal status {} is not 400-599 ({})",
                    refusal.status,
                    guest_text(&refusal.message)
                );
                Error::explain(InternalError, "guest refusal with a non-error status")
            }
            HookFailure::Skipped(_) if guest.kind == GuestKind::Module => {
                Error::explain(InternalError, "guest call skipped")
            }
            busy @ HookFailure::Busy(_) => {
                log::warn!("{guest}: {call}: {busy}");
                Error::explain(HTTPStatus(503), format!("{guest}: {call}: {busy}"))
            }
            HookFailure::Host(error) => {
                log::error!("{guest}: {call}: host error: {error}");
                Error::explain(InternalError, format!("{guest}: {call}: {error}"))
            }
            skipped @ HookFailure::Skipped(_) => {
                log::error!("{guest}: {call} failed: {skipped}");
                Error::explain(InternalError, format!("{guest}: {call}: {skipped}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::Refusal;
    use crate::metrics::Metrics;
    use crate::tenancy::budget::{Budget, BudgetLimits};
    use crate::upstream::pools::Pools;

    /// A tenant with no guests loaded: the policy needs only its budget,
    /// metrics, label and `on_guest_error`.
    fn tenant(on_guest_error: GuestErrorPolicy, limits: BudgetLimits) -> Tenant {
        let metrics = Metrics::new();
        Tenant {
            name: "t".into(),
            module: None,
            filters: Vec::new(),
            label: "guest.wasm".into(),
            on_guest_error,
            fallback_upstream: None,
            upstream: None,
            pools: Pools::new(&[], &[]),
            certificate: None,
            budget: Budget::new(limits, metrics.tenant("t")),
            scope: Default::default(),
            metrics: metrics.tenant("t"),
            loaded: Default::default(),
        }
    }

    fn fault() -> HookFailure {
        HookFailure::from(wasm_runtime::RuntimeFault::Timeout { limit_ms: 5 })
    }

    /// A tenant whose breaker opens at its first fault.
    fn tripped(on_guest_error: GuestErrorPolicy) -> Tenant {
        let limits = BudgetLimits {
            breaker_min_calls: 1,
            ..BudgetLimits::default()
        };
        let tenant = tenant(on_guest_error, limits);
        let call = GuestCall::hook(&tenant, Hook::RequestFilter, Stage::Headers);
        let permit = call.admit().unwrap();
        assert!(call.finish::<()>(Err(fault()), permit).is_err());
        tenant
    }

    fn status(stop: Result<(), Stop>) -> ErrorType {
        match stop {
            Err(Stop::Failed(error)) => error.etype().clone(),
            other => panic!("expected a failed request, got {other:?}"),
        }
    }

    #[test]
    fn an_open_breaker_skips_under_fail_open_and_refuses_under_fail_closed() {
        let open = tripped(GuestErrorPolicy::FailOpen);
        let call = GuestCall::hook(&open, Hook::UpstreamRequestFilter, Stage::Headers);
        let failure = call.admit().err().unwrap();
        assert!(matches!(
            failure,
            CallFailure::Hook(HookFailure::Skipped(_))
        ));
        assert!(call.settle(failure).is_ok(), "fail-open goes on");

        let closed = tripped(GuestErrorPolicy::FailClosed);
        let call = GuestCall::hook(&closed, Hook::UpstreamRequestFilter, Stage::Headers);
        let failure = call.admit().err().unwrap();
        assert!(matches!(
            call.settle(failure),
            Err(Stop::Refused {
                throttle: Throttle::BreakerOpen,
                call: CallName::Hook(Hook::UpstreamRequestFilter),
            })
        ));
    }

    #[test]
    fn a_refusal_depends_on_the_stage() {
        let limits = BudgetLimits {
            max_concurrent_calls: 1,
            ..BudgetLimits::default()
        };
        let tenant = tenant(GuestErrorPolicy::FailClosed, limits);
        let held = GuestCall::hook(&tenant, Hook::RequestFilter, Stage::Headers);
        let _slot = held.admit().unwrap();
        let at = |stage| {
            let call = GuestCall::new(
                &tenant,
                Guest::module(&tenant),
                CallName::Callback("proxy_on_request_body"),
                stage,
            );
            let failure = call.admit().err().unwrap();
            (
                matches!(failure, CallFailure::Hook(HookFailure::Skipped(_))),
                call.settle(failure),
            )
        };
        let (skipped, stop) = at(Stage::Headers);
        assert!(!skipped);
        assert!(matches!(
            stop,
            Err(Stop::Refused {
                throttle: Throttle::Concurrency,
                ..
            })
        ));
        let (skipped, stop) = at(Stage::Body(Direction::Request));
        assert!(!skipped);
        assert_eq!(status(stop), HTTPStatus(503));
        let (_, stop) = at(Stage::Body(Direction::Response));
        assert_eq!(status(stop), InternalError);
        let (skipped, stop) = at(Stage::End);
        assert!(skipped);
        assert!(stop.is_ok(), "at the end nothing changes");
    }

    #[test]
    fn a_callout_s_response_is_held_to_the_breaker_not_to_the_calls_in_flight() {
        let limits = BudgetLimits {
            max_concurrent_calls: 1,
            ..BudgetLimits::default()
        };
        let tenant = tenant(GuestErrorPolicy::FailClosed, limits);
        let held = GuestCall::hook(&tenant, Hook::RequestFilter, Stage::Headers);
        let _slot = held.admit().unwrap();
        let callout = |tenant| {
            GuestCall::new(
                tenant,
                Guest::module(tenant),
                CallName::Callback("proxy_on_http_call_response"),
                Stage::Callout,
            )
        };
        assert!(
            callout(&tenant).admit().is_ok(),
            "its request holds the slot"
        );

        let closed = tripped(GuestErrorPolicy::FailClosed);
        let call = callout(&closed);
        let failure = call.admit().err().unwrap();
        assert!(
            matches!(failure, CallFailure::Hook(HookFailure::Skipped(_))),
            "a callout's refusal is a skipped call"
        );
        assert_eq!(
            status(call.settle(failure)),
            InternalError,
            "which fails closed"
        );
    }

    #[test]
    fn one_fail_open_rule_for_modules_and_filters() {
        let open = tenant(GuestErrorPolicy::FailOpen, BudgetLimits::default());
        let call = GuestCall::hook(&open, Hook::ResponseFilter, Stage::Headers);
        assert!(call.settle(fault().into()).is_ok());
        assert!(call
            .settle(HookFailure::Skipped("the test says so").into())
            .is_ok());
        // The guest's own refusal and a host error never go on.
        let refusal = HookFailure::Refused(Refusal {
            status: 403,
            message: "no".into(),
        });
        assert_eq!(status(call.settle(refusal.into())), HTTPStatus(403));
        let host = HookFailure::Host("encoding".into());
        assert_eq!(status(call.settle(host.into())), InternalError);
        let not_an_error = HookFailure::Refused(Refusal {
            status: 200,
            message: "ok?".into(),
        });
        assert_eq!(status(call.settle(not_an_error.into())), InternalError);

        let closed = tenant(GuestErrorPolicy::FailClosed, BudgetLimits::default());
        let call = GuestCall::hook(&closed, Hook::ResponseFilter, Stage::Headers);
        assert_eq!(status(call.settle(fault().into())), InternalError);
        let at_end = GuestCall::hook(&closed, Hook::Logging, Stage::End);
        assert!(at_end.settle(fault().into()).is_ok());
    }

    #[test]
    fn finishing_counts_the_call_and_feeds_the_breaker() {
        let limits = BudgetLimits {
            breaker_min_calls: 2,
            ..BudgetLimits::default()
        };
        let tenant = tenant(GuestErrorPolicy::FailClosed, limits);
        let call = GuestCall::hook(&tenant, Hook::UpstreamPeer, Stage::Headers);
        let permit = call.admit().unwrap();
        assert_eq!(call.finish(Ok(7), permit).unwrap(), 7);
        let permit = call.admit().unwrap();
        let refusal = HookFailure::Refused(Refusal {
            status: 401,
            message: "who?".into(),
        });
        assert!(call.finish::<()>(Err(refusal), permit).is_err());
        assert!(call.admit().is_ok(), "a refusal is not a fault");
        for _ in 0..2 {
            let permit = call.admit().unwrap();
            assert!(call.finish::<()>(Err(fault()), permit).is_err());
        }
        assert!(
            matches!(
                call.admit(),
                Err(CallFailure::Refused(Throttle::BreakerOpen))
            ),
            "two faults opened the breaker"
        );
    }
}
