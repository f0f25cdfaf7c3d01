//! ABI v1 plumbing behind [`export_proxy!`](crate::export_proxy): the input
//! and output buffers, `(ptr, len)` packing, JSON in and out, and turning a
//! panic into a log line the host can report. Guest authors never call
//! these directly; the macro does.

use std::cell::{OnceCell, RefCell};
use std::thread::LocalKey;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::encode;
use crate::error::{Error, ErrorType, Result};
use crate::proxy::{ProxyHttp, RequestHeader, Session};
use crate::wire;

/// The ABI version this SDK implements (the `hook_abi_version` export).
pub const ABI_VERSION: i32 = 1;

/// An input buffer larger than this is released after use rather than kept.
const KEEP_INPUT_CAPACITY: usize = 1 << 20;

thread_local! {
    // Guests are single-threaded, so these are plain statics in practice.
    // Kept between calls: the host writes input into INPUT, reads OUTPUT
    // until the next call, and neither is reallocated on every request.
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where the guest's proxy lives between calls.
pub type ProxyCell<P> = LocalKey<OnceCell<P>>;

/// `hook_alloc`: room for `len` bytes of input; 0 if impossible.
pub fn alloc(len: i32) -> i32 {
    let Ok(len) = usize::try_from(len) else {
        return 0;
    };
    INPUT.with_borrow_mut(|input| {
        input.clear();
        if input.try_reserve_exact(len).is_err() {
            return 0;
        }
        input.resize(len, 0);
        input.as_mut_ptr() as usize as i32
    })
}

/// `hook_init`: builds the proxy from the module configuration.
pub fn init<P, C>(cell: &'static ProxyCell<P>, new: fn(C) -> Result<P>, ptr: i32, len: i32) -> i64
where
    C: DeserializeOwned,
{
    install_panic_hook();
    let result = read_input::<C>(ptr, len).and_then(new);
    let out = match result {
        Ok(proxy) => {
            cell.with(|cell| {
                // A second hook_init keeps the first proxy: instances are
                // configured once.
                let _ = cell.set(proxy);
            });
            wire::InitOutput {
                error: None,
                lazy_input: cfg!(target_arch = "wasm32"),
                lazy_ctx: cfg!(target_arch = "wasm32"),
            }
        }
        Err(e) => wire::InitOutput {
            error: Some(e.to_wire()),
            ..Default::default()
        },
    };
    write_output(&out)
}

/// `upstream_peer`: decodes the input, runs the hook, encodes the output.
pub fn upstream_peer<P, C>(
    cell: &'static ProxyCell<P>,
    new: fn(C) -> Result<P>,
    ptr: i32,
    len: i32,
) -> i64
where
    P: ProxyHttp,
    C: DeserializeOwned,
{
    let result = with_proxy(cell, new, |proxy| {
        let (request, ctx) = if len == 0 {
            (None, read_ctx_part::<P::CTX>()?)
        } else {
            let input: wire::PeerInput<Box<RawValue>, Option<P::CTX>> = read_input(ptr, len)?;
            (input.request, input.ctx)
        };
        let mut ctx = ctx.unwrap_or_else(|| proxy.new_ctx());
        let mut session = Session::from_json(request);
        let peer = proxy.upstream_peer(&mut session, &mut ctx)?;
        Ok((peer.into_wire(), ctx))
    });
    match result {
        Ok((peer, ctx)) => write_with(|out| encode::peer_output(out, &peer, sent_ctx(&ctx))),
        Err(e) => write_output(&wire::PeerOutput::<()> {
            peer: None,
            ctx: None,
            error: Some(e.to_wire()),
        }),
    }
}

/// `upstream_request_filter`: decodes the input, runs the hook, encodes the
/// output.
pub fn upstream_request_filter<P, C>(
    cell: &'static ProxyCell<P>,
    new: fn(C) -> Result<P>,
    ptr: i32,
    len: i32,
) -> i64
where
    P: ProxyHttp,
    C: DeserializeOwned,
{
    let result = with_proxy(cell, new, |proxy| {
        let (request, upstream_request, ctx) = if len == 0 {
            (None, None, read_ctx_part::<P::CTX>()?)
        } else {
            let input: wire::FilterInput<Box<RawValue>, Box<RawValue>, Option<P::CTX>> =
                read_input(ptr, len)?;
            (input.request, input.upstream_request, input.ctx)
        };
        let mut ctx = ctx.unwrap_or_else(|| proxy.new_ctx());
        let mut session = Session::from_json(request);
        let mut upstream_request = RequestHeader::from_json(upstream_request);
        proxy.upstream_request_filter(&mut session, &mut upstream_request, &mut ctx)?;
        Ok((upstream_request.into_changes(), ctx))
    });
    match result {
        Ok((changes, ctx)) => {
            write_with(|out| encode::filter_output(out, &changes, sent_ctx(&ctx)))
        }
        Err(e) => write_output(&wire::FilterOutput::<wire::UpstreamRequest, ()> {
            upstream_request: None,
            upstream_changes: None,
            ctx: None,
            error: Some(e.to_wire()),
        }),
    }
}

/// Runs `hook` with the proxy, building it from `{}` if the host never
/// called `hook_init`.
fn with_proxy<P, C, T>(
    cell: &'static ProxyCell<P>,
    new: fn(C) -> Result<P>,
    hook: impl FnOnce(&P) -> Result<T>,
) -> Result<T>
where
    C: DeserializeOwned,
{
    cell.with(|cell| {
        if cell.get().is_none() {
            // No hook_init came first (it installs the panic hook).
            install_panic_hook();
            let config = serde_json::from_str::<C>("{}").map_err(|e| {
                Error::explain(ErrorType::InternalError, format!("module config: {e}"))
            })?;
            let _ = cell.set(new(config)?);
        }
        match cell.get() {
            Some(proxy) => hook(proxy),
            None => Error::e_explain(ErrorType::InternalError, "proxy not initialised"),
        }
    })
}

/// Decodes the JSON the host wrote at `ptr` (which must be the buffer
/// `alloc` handed out) and releases an oversized buffer.
fn read_input<T: DeserializeOwned>(ptr: i32, len: i32) -> Result<T> {
    INPUT.with_borrow_mut(|input| {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if ptr as usize != input.as_ptr() as usize || len > input.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                "input is not in the buffer hook_alloc returned",
            );
        }
        let parsed = serde_json::from_slice(&input[..len]).map_err(|e| {
            Error::explain(
                ErrorType::InternalError,
                format!("guest cannot decode input: {e}"),
            )
        });
        input.clear();
        if input.capacity() > KEEP_INPUT_CAPACITY {
            input.shrink_to(0);
        }
        parsed
    })
}

/// The ctx to return to the host: none for a zero-sized type, which
/// carries nothing.
fn sent_ctx<T>(ctx: &T) -> Option<&T> {
    (std::mem::size_of::<T>() != 0).then_some(ctx)
}

/// The ctx fetched from the host (a hook called without input, see
/// `lazy_ctx`); None if it is `null` or the host has none, and never
/// fetched for a zero-sized type.
fn read_ctx_part<T: DeserializeOwned>() -> Result<Option<T>> {
    if std::mem::size_of::<T>() == 0 {
        return Ok(None);
    }
    INPUT.with_borrow_mut(|buffer| {
        if !fetch_part(wire::PART_CTX, buffer) {
            return Ok(None);
        }
        let parsed = serde_json::from_slice(buffer).map_err(|e| {
            Error::explain(
                ErrorType::InternalError,
                format!("guest cannot decode its ctx: {e}"),
            )
        });
        buffer.clear();
        if buffer.capacity() > KEEP_INPUT_CAPACITY {
            buffer.shrink_to(0);
        }
        parsed
    })
}

/// Encodes `value` into the output buffer and returns its packed location.
fn write_output<T: Serialize>(value: &T) -> i64 {
    write_with(|output| serde_json::to_writer(output, value))
}

/// Lets `encode` write the output buffer and returns its packed location;
/// if it fails, the output is an error instead.
fn write_with(encode: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>) -> i64 {
    OUTPUT.with_borrow_mut(|output| {
        output.clear();
        if let Err(e) = encode(&mut *output) {
            output.clear();
            let message = serde_json::to_string(&format!("guest cannot encode output: {e}"))
                .unwrap_or_else(|_| "\"\"".into());
            output.extend_from_slice(br#"{"error":{"status":500,"message":"#);
            output.extend_from_slice(message.as_bytes());
            output.extend_from_slice(b"}}");
        }
        pack(output.as_ptr() as usize, output.len())
    })
}

/// `(ptr << 32) | len`, the ABI's encoding of an output location.
pub fn pack(ptr: usize, len: usize) -> i64 {
    (((ptr as u64) << 32) | (len as u64 & 0xffff_ffff)) as i64
}

/// With `panic = "abort"` a panic traps; log its message first so the
/// proxy's log says why the request failed.
fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = info.payload_as_str().unwrap_or("(no message)");
            let line = match info.location() {
                Some(at) => format!("guest panicked at {}:{}: {message}", at.file(), at.line()),
                None => format!("guest panicked: {message}"),
            };
            crate::log::write(crate::log::Level::Error, &line);
        }));
    });
}

/// Fetches an input part (`wire::PART_*`) the host holds for the current
/// call, for guests with lazy input. None outside a call or if the host
/// does not have it.
pub(crate) fn input_part(part: i32) -> Option<Box<RawValue>> {
    let mut buffer = Vec::with_capacity(2048);
    if !fetch_part(part, &mut buffer) {
        return None;
    }
    let text = String::from_utf8(buffer).ok()?;
    RawValue::from_string(text).ok()
}

/// Replaces `buffer`'s contents with input part `part`, growing it if
/// needed; false if the host does not have the part.
fn fetch_part(part: i32, buffer: &mut Vec<u8>) -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        #[link(wasm_import_module = "hook")]
        extern "C" {
            #[link_name = "input_part"]
            fn host_input_part(part: i32, ptr: *mut u8, len: usize) -> i32;
        }
        buffer.clear();
        buffer.reserve(256);
        // SAFETY: the host writes at most `capacity` bytes at the pointer and
        // returns the part's full size; set_len only covers written bytes.
        unsafe {
            let mut size = host_input_part(part, buffer.as_mut_ptr(), buffer.capacity());
            if size > buffer.capacity() as i32 {
                buffer.reserve_exact(size as usize);
                size = host_input_part(part, buffer.as_mut_ptr(), buffer.capacity());
            }
            if size < 0 || size as usize > buffer.capacity() {
                return false;
            }
            buffer.set_len(size as usize);
        }
        true
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (part, buffer);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_puts_pointer_high_and_length_low() {
        assert_eq!(pack(0x10, 0x20), 0x10_0000_0020);
        assert_eq!(pack(0xffff_fff0, 7) as u64 >> 32, 0xffff_fff0);
    }
}
