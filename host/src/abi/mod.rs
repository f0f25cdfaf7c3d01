//! Guest ABIs: how the host talks to a kind of guest module. Each ABI
//! owns its export names, input and output shapes and host imports, and
//! implements [`GuestAbi`]; all of them run on the wasm layer in
//! `wasm_runtime`, so the sandbox's promises hold for every guest. A
//! module's ABI is told from its exports ([`ModuleKind::of`]).
//!
//! - [`v1`]: the project's own ABI (JSON in and out, ctx held by the host).
//! - [`proxy_wasm`]: proxy-wasm v0.2.1 filters (state in the guest, one
//!   instance per request, hostcalls).
//!
//! The host rules both ABIs apply to what a guest gives live here once:
//! header names, values and statuses ([`header_name`], [`header_value`],
//! [`final_status`]), which fields frame a message and may not be edited
//! ([`framing`]) and local replies ([`LocalReply::checked`]). Each
//! ABI only turns its own wire shapes into these.

pub(crate) mod failure;
pub(crate) mod framing;
pub mod grpc;
mod headers;
pub mod hook_table;
mod local_reply;
pub mod proxy_wasm;
pub mod throttle;
pub mod v1;

use anyhow::{bail, Context};
use wasmtime::{InstancePre, Linker, Module};

use wasm_runtime::{GuestEngine, Sandbox};

pub use failure::{CallError, HookFailure, HookFault, Refusal};
pub use headers::{
    final_status, header_name, header_refused, header_value, is_final_status, HeaderTarget,
};
pub use local_reply::{LocalReply, MAX_LOCAL_REPLY_BODY};

/// A guest ABI, as the wasm layer needs to know it.
pub trait GuestAbi {
    /// What each instance keeps in its store for the ABI's imports.
    type State: Send + 'static;

    /// Refuses any import the ABI does not provide, naming the first.
    fn check_imports(module: &Module) -> anyhow::Result<()>;

    /// Registers the ABI's host functions for `module`, whose imports
    /// have passed [`check_imports`](Self::check_imports).
    fn add_imports(
        linker: &mut Linker<Sandbox<Self::State>>,
        module: &Module,
    ) -> wasmtime::Result<()>;
}

/// The kinds of module the host recognises, by their exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// Exports `hook_abi_version`: the project's own ABI.
    V1,
    /// Exports `proxy_abi_version_0_2_*`: a proxy-wasm filter.
    ProxyWasm,
}

impl ModuleKind {
    /// The kind `module` declares, or an error that says what a module
    /// must export.
    pub fn of(module: &Module) -> anyhow::Result<Self> {
        let exports = |name: &str| module.get_export(name).is_some();
        if exports("hook_abi_version") {
            return Ok(ModuleKind::V1);
        }
        if exports("proxy_abi_version_0_2_1") || exports("proxy_abi_version_0_2_0") {
            return Ok(ModuleKind::ProxyWasm);
        }
        bail!(
            "not a guest module: it exports neither `hook_abi_version` (this host's guest ABI, \
             see docs/ABI.md) nor `proxy_abi_version_0_2_1` (a proxy-wasm filter)"
        )
    }
}

/// Compiles `bytes` (from the engine's module cache when it has them);
/// `name` labels the log line.
pub fn compile(engine: &GuestEngine, name: &str, bytes: &[u8]) -> anyhow::Result<Module> {
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
    Ok(module)
}

/// Checks `module`'s imports against ABI `A` and links them.
pub fn link<A: GuestAbi>(
    engine: &GuestEngine,
    module: &Module,
) -> anyhow::Result<InstancePre<Sandbox<A::State>>> {
    A::check_imports(module)?;
    let mut linker = Linker::new(engine.engine());
    A::add_imports(&mut linker, module).map_err(anyhow::Error::from)?;
    linker
        .instantiate_pre(module)
        .map_err(anyhow::Error::from)
        .context("linking host imports")
}
