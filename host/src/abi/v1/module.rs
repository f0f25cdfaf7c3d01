//! A loaded ABI v1 module: compiled once, checked at load, instantiated
//! on demand, its healthy instances reused.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use guest_sdk::wire;
use wasmtime::{InstancePre, Module};

use super::imports::V1;
use super::instance::{Export, InputParts, NoParts, V1Instance, V1State};
use crate::abi::hook_table::{Hook, HOOKS};
use crate::abi::{self, HookFailure, ModuleKind};
use crate::abi::{CallError, HookFault};
use wasm_runtime::{
    block_on, guest_text::LogRate, GuestEngine, GuestLimits, IdleInstances, InstanceQuota,
    LongCallSignal, Prepared, RuntimeFault, Sandbox, SliceMeter, Unmetered,
};

/// The ABI version this host speaks.
pub const ABI_VERSION: i32 = guest_sdk::ABI_VERSION;

/// How a module takes its hooks' input, as its `hook_init` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    /// The whole input JSON in the hook's buffer (no `hook_init`, or one
    /// that asked for nothing).
    Whole,
    /// `{"ctx": ...}` in the buffer; the other fields on demand through
    /// `hook.input_part` (`lazy_input`).
    LazyParts,
    /// No input buffer at all; the ctx too on demand (`lazy_ctx`).
    OnDemand,
}

impl InputMode {
    fn of(init: &wire::InitOutput) -> Self {
        match (init.lazy_input, init.lazy_ctx) {
            (true, true) => InputMode::OnDemand,
            (true, false) => InputMode::LazyParts,
            (false, _) => InputMode::Whole,
        }
    }
}

/// A compiled, validated v1 module and its pool of idle instances.
pub struct V1Module {
    name: Arc<str>,
    pre: InstancePre<Sandbox<V1State>>,
    limits: GuestLimits,
    /// The module configuration handed to `hook_init` of every instance.
    config_json: Vec<u8>,
    /// How the guest takes its hooks' input (said by its hook_init).
    input_mode: InputMode,
    /// Which hooks it exports, by [`Hook::index`].
    exports: [bool; Hook::COUNT],
    /// Raised by its instances' long calls, for the engine's ticker.
    long_calls: LongCallSignal,
    idle: IdleInstances<V1Instance>,
    /// Its tenant's bound on live instances; every instance made for a
    /// call holds a slot of it (the one made at load does not).
    quota: Arc<InstanceQuota>,
    /// Its tenant's bound on guest log lines.
    log_rate: Option<Arc<LogRate>>,
}

impl V1Module {
    /// Reads, compiles and checks the module at `path`, then makes a first
    /// instance and hands it `config_json`. Every failure names its cause;
    /// `name` labels its log lines.
    pub fn load(
        engine: &GuestEngine,
        name: Arc<str>,
        path: &Path,
        config_json: &str,
        limits: GuestLimits,
    ) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(engine, name, &bytes, config_json, limits)
            .with_context(|| format!("loading {}", path.display()))
    }

    /// As [`load`](Self::load), from bytes already read; `name` labels logs.
    pub fn from_bytes(
        engine: &GuestEngine,
        name: Arc<str>,
        bytes: &[u8],
        config_json: &str,
        limits: GuestLimits,
    ) -> anyhow::Result<Self> {
        let module = abi::compile(engine, &name, bytes)?;
        if ModuleKind::of(&module)? != ModuleKind::V1 {
            bail!(
                "is a proxy-wasm filter; a tenant's `module` must speak this host's guest ABI \
                 (docs/ABI.md)"
            );
        }
        let exports = hook_exports(&module);
        let pre = abi::link::<V1>(engine, &module)?;

        let long_calls = engine.long_calls().clone();
        let prepared = V1Instance::prepare(&pre, name.clone(), limits, long_calls.clone());
        let wasm = block_on(prepared.start(&Unmetered)).map_err(anyhow::Error::from)?;
        let mut instance = Box::new(V1Instance::new(wasm).map_err(anyhow::Error::from)?);
        let version = block_on(instance.abi_version()).context("calling hook_abi_version")?;
        if version != ABI_VERSION {
            bail!("guest ABI version is {version}, this host speaks version {ABI_VERSION}");
        }
        let mut guest_module = V1Module {
            name,
            pre,
            limits,
            config_json: config_json.as_bytes().to_vec(),
            input_mode: InputMode::Whole,
            exports,
            long_calls,
            idle: IdleInstances::new(),
            quota: InstanceQuota::new(u32::MAX),
            log_rate: None,
        };
        guest_module.input_mode =
            block_on(guest_module.initialise(&mut instance, &Unmetered)).context("hook_init")?;
        guest_module.idle.put(instance);
        Ok(guest_module)
    }

    /// The module, its instances held to `quota` (its tenant's).
    pub fn with_quota(mut self, quota: Arc<InstanceQuota>) -> Self {
        self.quota = quota;
        self
    }

    /// The module, its instances' log lines held to `rate` (its
    /// tenant's).
    pub fn with_log_rate(mut self, rate: Arc<LogRate>) -> Self {
        self.log_rate = Some(rate);
        self
    }

    /// The module's name for logs (its file name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the guest takes its hooks' input.
    pub fn input_mode(&self) -> InputMode {
        self.input_mode
    }

    /// The limits its instances run under.
    pub fn limits(&self) -> GuestLimits {
        self.limits
    }

    /// Whether the module exports `hook`; one it leaves out is never
    /// called.
    pub fn exports(&self, hook: Hook) -> bool {
        self.exports[hook.index()]
    }

    /// Runs `hook` on `input` (the concatenation of its pieces), with
    /// `parts` on demand, in an idle (or new) instance, and decodes the
    /// output while it is still in guest memory. The guest's running time
    /// is charged to `meter` slice by slice. A faulted instance is dropped,
    /// never reused; so is one whose call was dropped before it finished.
    ///
    /// The call runs directly on the worker's stack; one that runs long is
    /// stopped and runs again from the start, sliced, in a fresh instance
    /// (see `runtime::instance`). Hooks are functions of their input (any
    /// idle instance may serve a call), so only the guest's log lines of
    /// the stopped attempt show that it ran twice.
    pub async fn call<T>(
        &self,
        hook: Hook,
        input: &[&[u8]],
        parts: &dyn InputParts,
        meter: &dyn SliceMeter,
        decode: impl FnOnce(&[u8]) -> Result<T, HookFailure>,
    ) -> Result<T, HookFailure> {
        if !self.exports(hook) {
            return Err(HookFailure::Host(format!(
                "called {hook}, which the module does not export"
            )));
        }
        // Boxed where rare (a new instance, a long call), so that the
        // common call's future stays small.
        let mut instance = match self.idle.take() {
            Some(instance) => instance,
            None => {
                let slot = self.quota.take().map_err(HookFailure::no_room)?;
                let mut fresh = Box::pin(self.new_instance(meter)).await?;
                fresh.hold(slot);
                fresh
            }
        };
        let export = Export::Hook(hook);
        let mut outcome = instance.call_direct(export, input, parts, meter);
        if let Err(CallError::NeedsSlicing) = outcome {
            let ran = instance.running();
            let slot = instance.release();
            instance = Box::pin(self.new_instance(meter)).await?;
            if let Some(slot) = slot {
                instance.hold(slot);
            }
            outcome = Box::pin(instance.call_sliced(export, input, parts, meter, ran)).await;
        }
        let result = outcome
            .map_err(|e| HookFailure::Fault(e.into_fault()))
            .and_then(|location| decode(instance.output(location)?));
        if !matches!(result, Err(HookFailure::Fault(_)))
            && instance.calls < self.limits.instance_reuse
        {
            self.idle.put(instance);
        }
        result
    }

    /// A fresh instance, its `hook_init` run. Both steps first run
    /// directly on the worker's stack; if either runs long, the instance
    /// is made again on a fiber, sliced, like a long hook call.
    async fn new_instance(&self, meter: &dyn SliceMeter) -> Result<Box<V1Instance>, HookFault> {
        match self.new_instance_direct(meter) {
            Err(CallError::NeedsSlicing) => {}
            ready => return ready.map_err(CallError::into_fault),
        }
        let mut instance = self
            .prepare()
            .start(meter)
            .await
            .and_then(V1Instance::new)
            .map(Box::new)
            .map_err(|e| HookFault::Runtime(RuntimeFault::of_instantiation(&e)))?;
        let location = if instance.has_init() {
            let input: [&[u8]; 1] = [&self.config_json];
            Some(
                instance
                    .call_sliced(Export::Init, &input, &NoParts, meter, Duration::ZERO)
                    .await
                    .map_err(|e| init_fault(e.into_fault()))?,
            )
        } else {
            None
        };
        self.check_init(&instance, location)?;
        Ok(instance)
    }

    /// A store for a fresh instance of this module.
    fn prepare(&self) -> Prepared<'_, V1State> {
        let prepared = V1Instance::prepare(
            &self.pre,
            self.name.clone(),
            self.limits,
            self.long_calls.clone(),
        )
        .with_memory_quota(self.quota.clone());
        match &self.log_rate {
            Some(rate) => prepared.with_log_rate(rate.clone()),
            None => prepared,
        }
    }

    fn new_instance_direct(&self, meter: &dyn SliceMeter) -> Result<Box<V1Instance>, CallError> {
        let wasm = self.prepare().start_direct(meter)?;
        let mut instance = Box::new(
            V1Instance::new(wasm)
                .map_err(|e| CallError::Fault(HookFault::instantiate(format!("{e:#}"))))?,
        );
        let location = if instance.has_init() {
            let input: [&[u8]; 1] = [&self.config_json];
            match instance.call_direct(Export::Init, &input, &NoParts, meter) {
                Err(CallError::Fault(fault)) => return Err(init_fault(fault).into()),
                other => Some(other?),
            }
        } else {
            None
        };
        self.check_init(&instance, location)?;
        Ok(instance)
    }

    /// Checks that a fresh instance's `hook_init` (its output at
    /// `location`, None if not exported) answered as at load.
    fn check_init(
        &self,
        instance: &V1Instance,
        location: Option<(u32, u32)>,
    ) -> Result<(), HookFault> {
        let input_mode = match location {
            Some(location) => init_output(instance.output(location)?)
                .map_err(|e| HookFault::instantiate(format!("hook_init: {e:#}")))?,
            None => InputMode::Whole,
        };
        if input_mode != self.input_mode {
            return Err(HookFault::instantiate(
                "hook_init changed its answer about lazy input".into(),
            ));
        }
        Ok(())
    }

    /// Hands the module configuration to `hook_init`, if exported; returns
    /// how the guest takes its input.
    async fn initialise(
        &self,
        instance: &mut V1Instance,
        meter: &dyn SliceMeter,
    ) -> anyhow::Result<InputMode> {
        if !instance.has_init() {
            return Ok(InputMode::Whole);
        }
        let input: [&[u8]; 1] = [&self.config_json];
        let location = instance
            .call_sliced(Export::Init, &input, &NoParts, meter, Duration::ZERO)
            .await
            .map_err(CallError::into_fault)?;
        init_output(instance.output(location)?)
    }
}

/// How the guest takes its input, from `hook_init`'s output; an error if
/// it refused its configuration.
fn init_output(output: &[u8]) -> anyhow::Result<InputMode> {
    let out: wire::InitOutput = decode_json(output)?;
    if let Some(error) = out.error {
        bail!(
            "module refused its configuration: {}",
            abi::failure::guest_text(&error.message)
        );
    }
    Ok(InputMode::of(&out))
}

/// A fault in a fresh instance's `hook_init`, named as instantiation.
fn init_fault(fault: HookFault) -> HookFault {
    HookFault::instantiate(format!("hook_init: {fault}"))
}

/// Which hooks `module` exports.
fn hook_exports(module: &Module) -> [bool; Hook::COUNT] {
    let mut exports = [false; Hook::COUNT];
    for spec in &HOOKS {
        exports[spec.hook.index()] = module.get_export(spec.export).is_some();
    }
    exports
}

/// Decodes a hook's JSON output, naming what is wrong with it. `T` may
/// borrow from the output (e.g. `&RawValue`).
pub fn decode_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, HookFault> {
    let text = std::str::from_utf8(bytes).map_err(|_| HookFault::InvalidUtf8)?;
    serde_json::from_str(text).map_err(|e| HookFault::InvalidOutput(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll, Waker};

    use super::*;
    use wasm_runtime::EngineOptions;

    /// Sums the guest time charged to it.
    #[derive(Default)]
    struct Charged(AtomicU64);

    impl SliceMeter for Charged {
        fn charge(&self, ran: Duration, _ended: std::time::Instant) {
            self.0.fetch_add(ran.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// `upstream_peer` loops for ever; `upstream_request_filter` returns at
    /// once (an empty output).
    const LOOP_GUEST: &str = r#"(module
        (memory (export "memory") 1)
        (func (export "hook_abi_version") (result i32) i32.const 1)
        (func (export "hook_alloc") (param i32) (result i32) i32.const 1024)
        (func (export "upstream_peer") (param i32 i32) (result i64)
            (loop $forever (br $forever))
            unreachable)
        (func (export "upstream_request_filter") (param i32 i32) (result i64) i64.const 0))"#;

    fn load(hook_timeout_ms: u64) -> V1Module {
        let limits = GuestLimits {
            hook_timeout_ms,
            ..GuestLimits::default()
        };
        let engine = GuestEngine::new(&EngineOptions {
            max_memory_bytes: limits.memory_limit_bytes(),
            cache_dir: None,
            fresh_instances: false,
        })
        .unwrap();
        let bytes = wat::parse_str(LOOP_GUEST).unwrap();
        V1Module::from_bytes(&engine, "loop".into(), &bytes, "{}", limits).unwrap()
    }

    /// Polls `call` to completion; returns its output and how often it
    /// gave the thread back.
    fn poll_counting<F: std::future::Future>(call: F) -> (F::Output, usize) {
        let mut call = std::pin::pin!(call);
        let mut cx = Context::from_waker(Waker::noop());
        let mut yields = 0;
        loop {
            match call.as_mut().poll(&mut cx) {
                Poll::Ready(out) => return (out, yields),
                Poll::Pending => yields += 1,
            }
        }
    }

    #[test]
    fn a_short_call_finishes_in_one_poll() {
        let module = load(50);
        let charged = Charged::default();
        let (out, yields) = poll_counting(module.call(
            Hook::UpstreamRequestFilter,
            &[],
            &NoParts,
            &charged,
            |bytes| Ok(bytes.len()),
        ));
        assert_eq!((out.ok(), yields), (Some(0), 0));
        assert!(
            charged.0.load(Ordering::Relaxed) > 0,
            "its time was charged"
        );
    }

    #[test]
    fn a_long_call_yields_and_its_running_time_meets_the_deadline() {
        let module = load(50);
        let charged = Charged::default();
        let started = std::time::Instant::now();
        let (out, yields) =
            poll_counting(
                module.call(Hook::UpstreamPeer, &[], &NoParts, &charged, |bytes| {
                    Ok(bytes.len())
                }),
            );
        assert!(
            matches!(
                out,
                Err(HookFailure::Fault(HookFault::Runtime(
                    wasm_runtime::RuntimeFault::Timeout { limit_ms: 50 }
                )))
            ),
            "{out:?}"
        );
        let charged = Duration::from_nanos(charged.0.load(Ordering::Relaxed));
        println!("{yields} yields in {charged:?} of running time");
        assert!(yields >= 10, "yielded only {yields} times");
        assert!(
            charged >= Duration::from_millis(50)
                && charged < started.elapsed() + Duration::from_millis(1),
            "charged {charged:?}"
        );
        // The module still serves: the stopped instances were discarded.
        let (out, _) = poll_counting(module.call(
            Hook::UpstreamRequestFilter,
            &[],
            &NoParts,
            &Unmetered,
            |bytes| Ok(bytes.len()),
        ));
        assert_eq!(out.ok(), Some(0));
    }
}
