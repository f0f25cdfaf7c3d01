//! The raw ABI v1 layer (docs/ABI.md): the host's imports, the guest's
//! input and output buffers, `(ptr, len)` packing, and JSON in and out.
//!
//! This is what a guest written by hand builds on; [`entry`](crate::entry)
//! and [`export_proxy!`](crate::export_proxy) are built on it too. A guest
//! module serves one call at a time, so one input and one output buffer per
//! instance are enough: the host writes each call's input into the buffer
//! [`alloc`] hands out, and reads the output, which stays where
//! [`write_output`] put it until the next call.
//!
//! Off wasm (unit tests, doctests) there is no host: [`log`] writes to
//! stderr and [`fetch_part`] and [`fetch_header`] find nothing (the SDK's
//! own unit tests stand in a fake host, see `fake_host`).

use std::cell::RefCell;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorType, Result};

/// The ABI version this SDK implements, what `hook_abi_version` returns.
pub const ABI_VERSION: i32 = 1;

/// An input buffer larger than this is released after use rather than kept
/// for the next call.
const KEEP_INPUT_CAPACITY: usize = 1 << 20;

thread_local! {
    // A guest instance is single-threaded, so these are plain statics in
    // practice. Both are kept between calls so that a request does not
    // reallocate them.
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "wasm32")]
mod import {
    // The module `hook`'s imports, the only ones a guest may have.
    #[link(wasm_import_module = "hook")]
    extern "C" {
        // Writes the `len` UTF-8 bytes at `ptr` to the proxy's log.
        pub fn log(level: i32, ptr: *const u8, len: usize);
        // Copies up to `len` bytes of input part `part` to `ptr`; returns
        // the part's full size, or -1 if it is not available.
        pub fn input_part(part: i32, ptr: *mut u8, len: usize) -> i32;
        // Copies up to `out_len` bytes of the first value of header `name`
        // (`name_len` UTF-8 bytes at `name_ptr`, ASCII case-insensitive) of
        // input part `part` to `out_ptr`; returns the value's full size, or
        // -1 if the part or the header is absent.
        pub fn get_header(
            part: i32,
            name_ptr: *const u8,
            name_len: usize,
            out_ptr: *mut u8,
            out_len: usize,
        ) -> i32;
    }
}

/// Severity of a log line; the numbers are the `level` argument of the
/// `hook.log` import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Level {
    /// Something failed.
    Error = 1,
    /// Something looks wrong.
    Warn = 2,
    /// Normal operation.
    Info = 3,
    /// Detail for debugging.
    Debug = 4,
    /// Even more detail.
    Trace = 5,
}

/// Writes one line to the proxy's log (`hook.log`). The host cuts it at
/// 4 KiB and turns control characters into spaces.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: the host only reads `message.len()` bytes at its
        // pointer, which `message` owns for the whole call.
        unsafe { import::log(level as i32, message.as_ptr(), message.len()) };
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Makes a panic log its message and location at error level before it
/// traps (guests are built with `panic = "abort"`), so the proxy's log says
/// why the request failed: the host reports a trapping call's last error
/// line. Idempotent; call it from `hook_init`.
pub fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = info.payload_as_str().unwrap_or("(no message)");
            let line = match info.location() {
                Some(at) => format!("guest panicked at {}:{}: {message}", at.file(), at.line()),
                None => format!("guest panicked: {message}"),
            };
            log(Level::Error, &line);
        }));
    });
}

/// `hook_alloc`: the address of `len` writable bytes in the input buffer,
/// for the host to write the next call's input; 0 if there is no room.
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

/// Decodes the JSON input the host wrote at `ptr`, `len` bytes, which must
/// lie in the buffer [`alloc`] handed out; then frees the buffer for reuse.
pub fn read_input<T: DeserializeOwned>(ptr: i32, len: i32) -> Result<T> {
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
        release(input);
        parsed
    })
}

/// Replaces `buffer`'s contents with input part `part` (a `wire::PART_*`
/// selector) of the current call, through `hook.input_part`, growing the
/// buffer if needed. False if the host does not have that part in this
/// call (or outside a call).
pub fn fetch_part(part: i32, buffer: &mut Vec<u8>) -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        fill_from_host(buffer, 256, |ptr, capacity| {
            // SAFETY: the host writes at most `capacity` bytes at `ptr`,
            // `buffer`'s own spare capacity (see `fill_from_host`).
            unsafe { import::input_part(part, ptr, capacity) }
        })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        fake_host::fetch_part(part, buffer)
    }
}

/// Replaces `buffer`'s contents with what `fill` copies into it: `fill`
/// is a host import that writes at most `capacity` bytes at `ptr` and
/// returns the full size of what it has (or -1 if nothing). When it did
/// not fit, the buffer grows to the full size and `fill` runs once more.
#[cfg(target_arch = "wasm32")]
fn fill_from_host(
    buffer: &mut Vec<u8>,
    initial: usize,
    fill: impl Fn(*mut u8, usize) -> i32,
) -> bool {
    buffer.clear();
    buffer.reserve(initial);
    let mut size = fill(buffer.as_mut_ptr(), buffer.capacity());
    if size > 0 && size as usize > buffer.capacity() {
        buffer.reserve_exact(size as usize);
        size = fill(buffer.as_mut_ptr(), buffer.capacity());
    }
    if size < 0 || size as usize > buffer.capacity() {
        return false;
    }
    // `fill` wrote `size` bytes from the buffer's start, within capacity.
    // SAFETY: so those bytes are initialised (capacity checked above).
    unsafe { buffer.set_len(size as usize) };
    true
}

/// Replaces `buffer`'s contents with the first value of header `name`
/// (ASCII case-insensitive) of input part `part` (`wire::PART_REQUEST`,
/// `PART_UPSTREAM_REQUEST` or `PART_RESPONSE`), through `hook.get_header`,
/// growing the buffer if needed. False if the part or the header is absent
/// (or outside a call).
///
/// Cheaper than fetching and decoding the whole part when a hook reads a
/// header or two. The host sends values that are not UTF-8 with U+FFFD in
/// place of the bad bytes, so the bytes are UTF-8.
pub fn fetch_header(part: i32, name: &str, buffer: &mut Vec<u8>) -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        fill_from_host(buffer, 64, |ptr, capacity| {
            // The host reads `name.len()` bytes of `name`, owned for the call.
            // SAFETY: it writes at most `capacity` bytes at `ptr`, `buffer`'s
            // own spare capacity (see `fill_from_host`).
            unsafe { import::get_header(part, name.as_ptr(), name.len(), ptr, capacity) }
        })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        fake_host::fetch_header(part, name, buffer)
    }
}

/// The first value of header `name` of input part `part` (see
/// [`fetch_header`]), or None if the part or the header is absent.
pub fn get_header(part: i32, name: &str) -> Option<String> {
    let mut value = Vec::new();
    if !fetch_header(part, name, &mut value) {
        return None;
    }
    // The host sends UTF-8; should a byte slip through, it is replaced
    // rather than trusted.
    Some(match String::from_utf8(value) {
        Ok(value) => value,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Fetches input part `part` (see [`fetch_part`]) and decodes it as JSON;
/// `Ok(None)` if the host does not have it. Uses the input buffer, which is
/// free once the call's input has been read.
pub fn read_part<T: DeserializeOwned>(part: i32) -> Result<Option<T>> {
    INPUT.with_borrow_mut(|buffer| {
        if !fetch_part(part, buffer) {
            return Ok(None);
        }
        let parsed = serde_json::from_slice(buffer).map(Some).map_err(|e| {
            Error::explain(
                ErrorType::InternalError,
                format!("guest cannot decode input part {part}: {e}"),
            )
        });
        release(buffer);
        parsed
    })
}

/// Empties the input buffer, giving back its memory if it grew large.
fn release(input: &mut Vec<u8>) {
    input.clear();
    if input.capacity() > KEEP_INPUT_CAPACITY {
        input.shrink_to(0);
    }
}

/// Encodes `value` as JSON into the output buffer and returns its packed
/// location, a hook's return value.
pub fn write_output<T: Serialize>(value: &T) -> i64 {
    write_with(|output| serde_json::to_writer(output, value))
}

/// Lets `encode` write the output buffer (given empty) and returns its
/// packed location, a hook's return value. If `encode` fails, the output
/// is `{"error": ...}` with status 500 instead.
pub fn write_with(encode: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>) -> i64 {
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

/// `(ptr << 32) | len`, the ABI's encoding of an output's location.
pub fn pack(ptr: usize, len: usize) -> i64 {
    (((ptr as u64) << 32) | (len as u64 & 0xffff_ffff)) as i64
}

/// Off wasm there is no host. The SDK's unit tests put the parts of a
/// pretend call here to exercise the paths that fetch from the host;
/// everywhere else it holds nothing, so nothing is found.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod fake_host {
    use std::cell::RefCell;

    thread_local! {
        static PARTS: RefCell<Vec<(i32, String)>> = const { RefCell::new(Vec::new()) };
        static HEADER_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Makes `json` input part `part` of the pretend call (tests only).
    #[cfg(test)]
    pub(crate) fn set_part(part: i32, json: &str) {
        PARTS.with_borrow_mut(|parts| {
            parts.retain(|(p, _)| *p != part);
            parts.push((part, json.to_string()));
        });
    }

    /// Ends the pretend call: no parts, no header calls counted.
    #[cfg(test)]
    pub(crate) fn clear() {
        PARTS.with_borrow_mut(Vec::clear);
        HEADER_CALLS.set(0);
    }

    /// How many times `hook.get_header` was called (tests only).
    #[cfg(test)]
    pub(crate) fn header_calls() -> usize {
        HEADER_CALLS.get()
    }

    fn part(part: i32) -> Option<String> {
        PARTS.with_borrow(|parts| {
            parts
                .iter()
                .find(|(p, _)| *p == part)
                .map(|(_, json)| json.clone())
        })
    }

    pub(crate) fn fetch_part(part_id: i32, buffer: &mut Vec<u8>) -> bool {
        match part(part_id) {
            Some(json) => {
                buffer.clear();
                buffer.extend_from_slice(json.as_bytes());
                true
            }
            None => false,
        }
    }

    pub(crate) fn fetch_header(part_id: i32, name: &str, buffer: &mut Vec<u8>) -> bool {
        HEADER_CALLS.set(HEADER_CALLS.get() + 1);
        #[derive(serde::Deserialize)]
        struct Headers {
            #[serde(default)]
            headers: Vec<(String, String)>,
        }
        let Some(json) = part(part_id) else {
            return false;
        };
        let Ok(parsed) = serde_json::from_str::<Headers>(&json) else {
            return false;
        };
        match parsed
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, value)) => {
                buffer.clear();
                buffer.extend_from_slice(value.as_bytes());
                true
            }
            None => false,
        }
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

    #[test]
    fn encoding_failure_becomes_an_error_output() {
        let at = write_with(|_| Err(serde::ser::Error::custom("no")));
        let text = OUTPUT.with_borrow(|output| {
            assert_eq!(at as u64 & 0xffff_ffff, output.len() as u64);
            String::from_utf8(output.clone()).unwrap()
        });
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["error"]["status"], 500);
    }

    #[test]
    fn no_part_off_wasm() {
        fake_host::clear();
        assert!(matches!(read_part::<serde_json::Value>(0), Ok(None)));
        assert_eq!(get_header(0, "host"), None);
    }

    #[test]
    fn fake_host_answers_parts_and_headers() {
        fake_host::clear();
        fake_host::set_part(0, r#"{"headers":[["Host","a"],["host","b"]]}"#);
        assert_eq!(get_header(0, "HOST").as_deref(), Some("a"));
        assert_eq!(get_header(0, "x"), None);
        assert_eq!(get_header(3, "host"), None);
        fake_host::clear();
    }
}
