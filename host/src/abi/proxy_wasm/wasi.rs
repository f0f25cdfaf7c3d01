//! The WASI preview1 functions that Rust and TinyGo filters import, and no
//! more: `fd_write` to stdout or stderr becomes log lines, clocks and
//! random bytes work, the environment and arguments are empty, and
//! `proc_exit` is a fault. No filesystem, no sockets: every other
//! function a filter may import returns `ENOSYS`.
//!
//! The same functions are served under `wasi_unstable` (preview0), which
//! the AssemblyScript SDK imports `proc_exit` from: those implemented
//! here have the same signatures in both; the refused ones take whatever
//! type the module declares.

use wasmtime::{Caller, Linker, Module, Val};

use super::hostcalls::write;
use super::PwState;
use wasm_runtime::Sandbox;

type Ctx<'a> = Caller<'a, Sandbox<PwState>>;

const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const NOSYS: i32 = 52;

/// The most one `fd_write` call takes (and logs); it reports a short
/// write past it.
const MAX_WRITE: usize = 4096;
/// The most iovecs one `fd_write` takes (Linux's `IOV_MAX`).
const MAX_IOVS: i32 = 1024;
/// The most bytes one `random_get` fills: a larger request is `EINVAL`,
/// so no single hostcall runs long outside the guest's deadline.
const MAX_RANDOM: usize = 64 << 10;

/// Functions implemented here.
const IMPLEMENTED: &[&str] = &[
    "fd_write",
    "clock_time_get",
    "random_get",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "proc_exit",
    "sched_yield",
];

/// Other preview1 functions a filter may import; they return `ENOSYS`.
const REFUSED: &[&str] = &[
    "clock_res_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_raise",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];

/// The module names WASI is imported under: preview1, and preview0
/// (`wasi_unstable`).
pub(super) const MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

/// Whether a filter may import `<module>.<name>` of WASI.
pub(super) fn provides(module: &str, name: &str) -> bool {
    MODULES.contains(&module) && (IMPLEMENTED.contains(&name) || REFUSED.contains(&name))
}

/// Zero elements of zero bytes: for the environment and the arguments.
fn nothing(mut caller: Ctx<'_>, count: i32, size: i32) -> i32 {
    if write(&mut caller, count, &0u32.to_le_bytes())
        && write(&mut caller, size, &0u32.to_le_bytes())
    {
        SUCCESS
    } else {
        FAULT
    }
}

/// Registers the WASI functions `module` imports, under both names.
pub(super) fn add(linker: &mut Linker<Sandbox<PwState>>, module: &Module) -> wasmtime::Result<()> {
    for wasi in MODULES {
        if module.imports().any(|import| import.module() == wasi) {
            add_module(linker, module, wasi)?;
        }
    }
    Ok(())
}

/// Registers the functions `module` imports from `wasi`, one of
/// [`MODULES`].
fn add_module(
    linker: &mut Linker<Sandbox<PwState>>,
    module: &Module,
    wasi: &str,
) -> wasmtime::Result<()> {
    linker.func_wrap(
        wasi,
        "fd_write",
        |mut caller: Ctx<'_>, fd: i32, iovs: i32, iovs_len: i32, written: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return BADF;
            }
            let Some(memory) = caller.data().memory() else {
                return FAULT;
            };
            if !(0..=MAX_IOVS).contains(&iovs_len) {
                return INVAL;
            }
            let data = memory.data(&caller);
            let mut text = Vec::new();
            for i in 0..iovs_len as usize {
                let at = (iovs as u32 as usize).saturating_add(i * 8);
                let Some(iov) = data.get(at..at + 8) else {
                    return FAULT;
                };
                let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]) as usize;
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]) as usize;
                let Some(bytes) = data.get(ptr..ptr.saturating_add(len)) else {
                    return FAULT;
                };
                let room = MAX_WRITE - text.len();
                text.extend_from_slice(&bytes[..bytes.len().min(room)]);
                if text.len() == MAX_WRITE {
                    break;
                }
            }
            // A short write: the guest's libc writes the rest with more
            // calls, each as bounded as this one.
            let total = text.len() as u32;
            let level = if fd == 2 {
                log::Level::Error
            } else {
                log::Level::Info
            };
            for line in String::from_utf8_lossy(&text).lines() {
                let line = crate::abi::failure::guest_text(line);
                if !line.is_empty() {
                    caller.data_mut().guest_log(level, line);
                }
            }
            if write(&mut caller, written, &total.to_le_bytes()) {
                SUCCESS
            } else {
                FAULT
            }
        },
    )?;
    linker.func_wrap(
        wasi,
        "clock_time_get",
        |mut caller: Ctx<'_>, clock: i32, _precision: i64, time: i32| -> i32 {
            let nanos = match clock {
                // Realtime.
                0 => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                // Monotonic (and the CPU-time clocks, approximated by it).
                1..=3 => {
                    static START: std::sync::OnceLock<std::time::Instant> =
                        std::sync::OnceLock::new();
                    START
                        .get_or_init(std::time::Instant::now)
                        .elapsed()
                        .as_nanos() as u64
                }
                _ => return INVAL,
            };
            if write(&mut caller, time, &nanos.to_le_bytes()) {
                SUCCESS
            } else {
                FAULT
            }
        },
    )?;
    linker.func_wrap(
        wasi,
        "random_get",
        |mut caller: Ctx<'_>, buffer: i32, len: i32| -> i32 {
            let Some(memory) = caller.data().memory() else {
                return FAULT;
            };
            let start = buffer as u32 as usize;
            let len = len as u32 as usize;
            if len > MAX_RANDOM {
                return INVAL;
            }
            let Some(end) = start.checked_add(len) else {
                return FAULT;
            };
            // Filled in place: the guest's own memory bounds the request.
            match memory.data_mut(&mut caller).get_mut(start..end) {
                Some(target) => match getrandom(target) {
                    Ok(()) => SUCCESS,
                    Err(_) => NOSYS,
                },
                None => FAULT,
            }
        },
    )?;
    linker.func_wrap(wasi, "environ_sizes_get", nothing)?;
    linker.func_wrap(wasi, "args_sizes_get", nothing)?;
    linker.func_wrap(wasi, "environ_get", |_: Ctx<'_>, _: i32, _: i32| -> i32 {
        SUCCESS
    })?;
    linker.func_wrap(wasi, "args_get", |_: Ctx<'_>, _: i32, _: i32| -> i32 {
        SUCCESS
    })?;
    linker.func_wrap(wasi, "sched_yield", |_: Ctx<'_>| -> i32 { SUCCESS })?;
    linker.func_wrap(
        wasi,
        "proc_exit",
        |_: Ctx<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!("proc_exit({code})")))
        },
    )?;
    for import in module.imports() {
        if import.module() != wasi || !REFUSED.contains(&import.name()) {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else {
            continue;
        };
        linker.func_new(wasi, import.name(), ty, |_caller, _params, results| {
            for result in results.iter_mut() {
                *result = Val::I32(NOSYS);
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Random bytes from the operating system.
fn getrandom(bytes: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(bytes)
}
