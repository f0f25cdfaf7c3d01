//! A loaded guest module: compiled once, checked against ABI v1 at load,
//! instantiated on demand, its healthy instances reused.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use guest_sdk::wire;
use wasmtime::{ExternType, InstancePre, Linker, Module};

use super::engine::{GuestEngine, LongCallSignal};
use super::fault::HookFault;
use super::instance::{
    add_host_imports, CallError, Export, GuestInstance, GuestState, InputParts, NoParts,
    SliceMeter, Unmetered,
};

/// The ABI version this host speaks.
pub const ABI_VERSION: i32 = guest_sdk::ABI_VERSION;

/// Idle instances kept per module; more are dropped when returned. Fast
/// calls finish within one poll, so a module rarely has more live instances
/// than worker threads; only calls that yield add more.
const MAX_IDLE_INSTANCES: usize = 16;

/// Per-instance limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    /// Deadline of one hook call, in the call's own running time (time
    /// spent waiting for a worker between its slices does not count).
    pub hook_timeout_ms: u64,
    /// Linear memory cap of one instance.
    pub memory_limit_mib: u64,
    /// Hook calls an instance serves before it is replaced; 1 means a fresh
    /// instance for every call.
    pub instance_reuse: u64,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            hook_timeout_ms: 20,
            memory_limit_mib: 64,
            instance_reuse: 1000,
        }
    }
}

/// Largest `hook_timeout_ms` accepted.
pub const MAX_HOOK_TIMEOUT_MS: u64 = 10_000;

/// Largest `memory_limit_mib` accepted.
pub const MAX_MEMORY_LIMIT_MIB: u64 = 4096;

impl GuestLimits {
    /// Refuses limits out of range (the flags' ranges).
    pub fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_HOOK_TIMEOUT_MS).contains(&self.hook_timeout_ms) {
            bail!("hook_timeout_ms must be 1-{MAX_HOOK_TIMEOUT_MS}");
        }
        if !(1..=MAX_MEMORY_LIMIT_MIB).contains(&self.memory_limit_mib) {
            bail!("memory_limit_mib must be 1-{MAX_MEMORY_LIMIT_MIB}");
        }
        if self.instance_reuse == 0 {
            bail!("instance_reuse must be at least 1");
        }
        Ok(())
    }

    /// The deadline of one call, in running time.
    pub fn hook_timeout(&self) -> Duration {
        Duration::from_millis(self.hook_timeout_ms)
    }

    /// The memory cap in bytes.
    pub fn memory_limit_bytes(&self) -> usize {
        (self.memory_limit_mib as usize).saturating_mul(1 << 20)
    }
}

/// The hooks a request can call, named as their exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `upstream_peer`
    UpstreamPeer,
    /// `upstream_request_filter`
    UpstreamRequestFilter,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::UpstreamPeer => "upstream_peer",
            Hook::UpstreamRequestFilter => "upstream_request_filter",
        })
    }
}

/// How a module takes its hooks' input, as its `hook_init` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    /// The whole input JSON in the hook's buffer (no `hook_init`, or one
    /// that asked for nothing).
    Whole,
    /// `{"ctx": ...}` in the buffer; the request parts on demand through
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

/// A compiled, validated guest module and its pool of idle instances.
pub struct GuestModule {
    name: Arc<str>,
    pre: InstancePre<GuestState>,
    limits: GuestLimits,
    /// The module configuration handed to `hook_init` of every instance.
    config_json: Vec<u8>,
    /// How the guest takes its hooks' input (said by its hook_init).
    input_mode: InputMode,
    /// Raised by its instances' long calls, for the engine's ticker.
    long_calls: LongCallSignal,
    /// Boxed, so that taking and returning one moves a pointer, not the
    /// struct (measured: 40-50 ns less per hook call).
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<GuestInstance>>>,
}

impl GuestModule {
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
        let started = std::time::Instant::now();
        let hits = engine.cache_hits();
        let module = Module::new(engine.engine(), bytes)
            .map_err(anyhow::Error::from)
            .context("not a valid WebAssembly module")?;
        log::info!(
            "module {name}: compiled in {:.1} ms ({})",
            started.elapsed().as_secs_f64() * 1e3,
            if engine.cache_hits() > hits {
                "from the module cache"
            } else {
                "not cached"
            }
        );
        check_imports(&module)?;
        let mut linker = Linker::new(engine.engine());
        add_host_imports(&mut linker).map_err(anyhow::Error::from)?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(anyhow::Error::from)
            .context("linking host imports")?;

        let long_calls = engine.long_calls().clone();
        let mut instance = Box::new(
            block_on(GuestInstance::new(
                &pre,
                name.clone(),
                limits,
                long_calls.clone(),
                &Unmetered,
            ))
            .map_err(anyhow::Error::from)?,
        );
        let version = block_on(instance.abi_version()).context("calling hook_abi_version")?;
        if version != ABI_VERSION {
            bail!("guest ABI version is {version}, this host speaks version {ABI_VERSION}");
        }
        let mut guest_module = GuestModule {
            name,
            pre,
            limits,
            config_json: config_json.as_bytes().to_vec(),
            input_mode: InputMode::Whole,
            long_calls,
            idle: Mutex::new(Vec::new()),
        };
        guest_module.input_mode =
            block_on(guest_module.initialise(&mut instance, &Unmetered)).context("hook_init")?;
        guest_module.put_idle(instance);
        Ok(guest_module)
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

    /// Runs `hook` on `input` (the concatenation of its pieces), with
    /// `parts` on demand, in an idle (or new) instance, and decodes the
    /// output while it is still in guest memory. The guest's running time
    /// is charged to `meter` slice by slice. A faulted instance is dropped,
    /// never reused; so is one whose call was dropped before it finished.
    ///
    /// The call runs directly on the worker's stack; one that runs long is
    /// stopped and runs again from the start, sliced, in a fresh instance
    /// (see `instance.rs`). Hooks are functions of their input (any idle
    /// instance may serve a call), so only the guest's log lines of the
    /// stopped attempt show that it ran twice.
    pub async fn call<T>(
        &self,
        hook: Hook,
        input: &[&[u8]],
        parts: &dyn InputParts,
        meter: &dyn SliceMeter,
        decode: impl FnOnce(&[u8]) -> Result<T, HookFault>,
    ) -> Result<T, HookFault> {
        // Boxed where rare (a new instance, a long call), so that the
        // common call's future stays small.
        let mut instance = match self.take_idle() {
            Some(instance) => instance,
            None => Box::pin(self.new_instance(meter)).await?,
        };
        let export = match hook {
            Hook::UpstreamPeer => Export::UpstreamPeer,
            Hook::UpstreamRequestFilter => Export::UpstreamRequestFilter,
        };
        let mut outcome = instance.call_direct(export, input, parts, meter);
        if let Err(CallError::NeedsSlicing) = outcome {
            let ran = instance.running();
            instance = Box::pin(self.new_instance(meter)).await?;
            outcome = Box::pin(instance.call_sliced(export, input, parts, meter, ran)).await;
        }
        let result = outcome
            .map_err(CallError::into_fault)
            .and_then(|location| decode(instance.output(location)?));
        if result.is_ok() && instance.calls < self.limits.instance_reuse {
            self.put_idle(instance);
        }
        result
    }

    fn take_idle(&self) -> Option<Box<GuestInstance>> {
        // A poisoned lock only means another thread panicked while pushing
        // or popping; the Vec itself is intact.
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put_idle(&self, instance: Box<GuestInstance>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_INSTANCES {
            idle.push(instance);
        }
    }

    async fn new_instance(&self, meter: &dyn SliceMeter) -> Result<Box<GuestInstance>, HookFault> {
        let mut instance = GuestInstance::new(
            &self.pre,
            self.name.clone(),
            self.limits,
            self.long_calls.clone(),
            meter,
        )
        .await
        .map(Box::new)
        .map_err(|e| HookFault::Instantiate(format!("{e:#}")))?;
        let input_mode = self
            .initialise(&mut instance, meter)
            .await
            .map_err(|e| HookFault::Instantiate(format!("hook_init: {e:#}")))?;
        if input_mode != self.input_mode {
            return Err(HookFault::Instantiate(
                "hook_init changed its answer about lazy input".into(),
            ));
        }
        Ok(instance)
    }

    /// Hands the module configuration to `hook_init`, if exported; returns
    /// how the guest takes its input.
    async fn initialise(
        &self,
        instance: &mut GuestInstance,
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
        let out: wire::InitOutput = decode_json(instance.output(location)?)?;
        if let Some(error) = out.error {
            bail!("module refused its configuration: {}", error.message);
        }
        Ok(InputMode::of(&out))
    }
}

/// Runs a load-time call to completion on this thread: its yields are
/// polled again at once, and its deadline still bounds it. Loading is off
/// the request path (start-up, or the reload thread).
fn block_on<F: std::future::Future>(call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = call.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Decodes a hook's JSON output, naming what is wrong with it. `T` may
/// borrow from the output (e.g. `&RawValue`).
pub fn decode_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, HookFault> {
    let text = std::str::from_utf8(bytes).map_err(|_| HookFault::InvalidUtf8)?;
    serde_json::from_str(text).map_err(|e| HookFault::InvalidOutput(e.to_string()))
}

/// Refuses any import but the host's own (`hook.*`), naming the first
/// offender.
fn check_imports(module: &Module) -> anyhow::Result<()> {
    for import in module.imports() {
        let known = import.module() == "hook"
            && matches!(import.name(), "log" | "input_part")
            && matches!(import.ty(), ExternType::Func(_));
        if !known {
            bail!(
                "imports `{}.{}`, which this host does not provide (guests may import only `hook.log` and `hook.input_part`)",
                import.module(),
                import.name()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::runtime::EngineOptions;

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

    fn load(hook_timeout_ms: u64) -> GuestModule {
        let limits = GuestLimits {
            hook_timeout_ms,
            ..GuestLimits::default()
        };
        let engine = GuestEngine::new(&EngineOptions {
            max_memory_bytes: limits.memory_limit_bytes(),
            cache_dir: None,
        })
        .unwrap();
        let bytes = wat::parse_str(LOOP_GUEST).unwrap();
        GuestModule::from_bytes(&engine, "loop".into(), &bytes, "{}", limits).unwrap()
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
        assert_eq!((out, yields), (Ok(0), 0));
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
        assert_eq!(out, Err(HookFault::Timeout { limit_ms: 50 }));
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
        assert_eq!(out, Ok(0));
    }
}
