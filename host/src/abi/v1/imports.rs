//! ABI v1's host imports, module `hook`: `log`, `input_part` and
//! `get_header`.

use std::borrow::Cow;

use wasmtime::{Caller, ExternType, Linker, Module};

use super::instance::{InputParts, V1State};
use crate::abi::GuestAbi;
use wasm_runtime::{read_guest_line, Sandbox};

/// The project's own guest ABI, version 1 (docs/ABI.md).
pub struct V1;

/// Every import a v1 guest may use, all in module `hook`.
const IMPORTS: [&str; 3] = ["log", "input_part", "get_header"];

impl GuestAbi for V1 {
    type State = V1State;

    fn check_imports(module: &Module) -> anyhow::Result<()> {
        for import in module.imports() {
            let known = import.module() == "hook"
                && IMPORTS.contains(&import.name())
                && matches!(import.ty(), ExternType::Func(_));
            if !known {
                anyhow::bail!(
                    "imports `{}.{}`, which this host does not provide (guests may import only {})",
                    import.module(),
                    import.name(),
                    IMPORTS.map(|name| format!("`hook.{name}`")).join(", ")
                );
            }
        }
        Ok(())
    }

    fn add_imports(
        linker: &mut Linker<Sandbox<V1State>>,
        _module: &Module,
    ) -> wasmtime::Result<()> {
        linker.func_wrap("hook", "log", log)?;
        linker.func_wrap("hook", "input_part", input_part)?;
        linker.func_wrap("hook", "get_header", get_header)?;
        Ok(())
    }
}

/// `hook.log(level, ptr, len)`: one line into the proxy's log.
fn log(mut caller: Caller<'_, Sandbox<V1State>>, level: i32, ptr: i32, len: i32) {
    let line = read_guest_line(&mut caller, ptr as u32, len as u32);
    let level = match level {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        4 => log::Level::Debug,
        _ => log::Level::Trace,
    };
    caller.data_mut().guest_log(level, line);
}

/// `hook.input_part(part, ptr, len) -> size`: copies up to `len` bytes of
/// input part `part` to `ptr`; the part's full size, or -1 if this call
/// has no such part or the buffer lies outside memory.
fn input_part(caller: Caller<'_, Sandbox<V1State>>, part: i32, ptr: i32, len: i32) -> i32 {
    copy_out(caller, ptr, len, |parts, _| {
        parts.part(part).map(|json| json.as_bytes().into())
    })
}

/// `hook.get_header(part, name_ptr, name_len, ptr, len) -> size`: copies
/// up to `len` bytes of the first value of header `name` of part `part`
/// to `ptr`, lossily as UTF-8; the value's full size, or -1 if the part or
/// the header is absent or a buffer lies outside memory.
fn get_header(
    caller: Caller<'_, Sandbox<V1State>>,
    part: i32,
    name_ptr: i32,
    name_len: i32,
    ptr: i32,
    len: i32,
) -> i32 {
    copy_out(caller, ptr, len, |parts, memory| {
        let start = name_ptr as u32 as usize;
        let name = memory.get(start..start.checked_add(name_len as u32 as usize)?)?;
        let name = std::str::from_utf8(name).ok()?;
        let value = parts.header(part, name)?;
        Some(match String::from_utf8_lossy(value) {
            Cow::Borrowed(_) => Cow::Borrowed(value),
            Cow::Owned(fixed) => Cow::Owned(fixed.into_bytes()),
        })
    })
}

/// Copies what `find` finds in the call's input parts (it may read guest
/// memory) to `ptr`, at most `len` bytes; its full size, or -1.
fn copy_out(
    mut caller: Caller<'_, Sandbox<V1State>>,
    ptr: i32,
    len: i32,
    find: impl for<'p> FnOnce(&'p dyn InputParts, &[u8]) -> Option<Cow<'p, [u8]>>,
) -> i32 {
    let Some(memory) = caller.data().memory() else {
        return -1;
    };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let Some(parts) = state.abi.parts() else {
        return -1;
    };
    let Some(bytes) = find(parts, data) else {
        return -1;
    };
    let Ok(size) = i32::try_from(bytes.len()) else {
        return -1;
    };
    let copied = bytes.len().min(len as u32 as usize);
    let start = ptr as u32 as usize;
    match data.get_mut(start..start + copied) {
        Some(target) => {
            target.copy_from_slice(&bytes[..copied]);
            size
        }
        None => -1,
    }
}
