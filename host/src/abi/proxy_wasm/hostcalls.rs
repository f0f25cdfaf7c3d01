//! The `env.proxy_*` hostcalls a filter imports. Every pointer from the
//! guest is bounds-checked: a bad one gets `INVALID_MEMORY_ACCESS`, never
//! a host panic. Data the host returns is written into memory the guest's
//! own allocator gave (the SDKs take ownership of it), so those hostcalls
//! are async: they call back into the guest.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Module, Val};

use super::{PwState, Stream};
use crate::abi::proxy_wasm::HeaderPairs;
use crate::runtime::{read_guest_line, Sandbox};

/// `proxy_status_t`.
pub(super) mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
}

type Ctx<'a> = Caller<'a, Sandbox<PwState>>;

/// Hostcalls implemented here.
const IMPLEMENTED: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_get_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_size",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_send_local_response",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_define_metric",
    "proxy_set_buffer_bytes",
    "proxy_set_tick_period_milliseconds",
    "proxy_http_call",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
];

/// Hostcalls of the spec (and of the SDKs' import lists) that a filter may
/// import but this host does not implement yet. They return
/// `INTERNAL_FAILURE`, which the SDKs turn into an error where they expect
/// a call to fail (HTTP and gRPC calls, foreign functions):
/// `UNIMPLEMENTED` is not in the Rust SDK's status enum.
const UNIMPLEMENTED: &[&str] = &[
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_call_foreign_function",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_clear_route_cache",
];

/// Whether a filter may import `env.<name>`.
pub(super) fn provides(name: &str) -> bool {
    IMPLEMENTED.contains(&name) || UNIMPLEMENTED.contains(&name)
}

/// The bytes at `(ptr, len)` in guest memory.
fn read(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let memory = caller.data().memory()?;
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    memory.data(&caller).get(start..end).map(<[u8]>::to_vec)
}

/// The UTF-8 string at `(ptr, len)`, lossily.
fn read_str(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Option<String> {
    read(caller, ptr, len).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// `OK` once `bytes` are written at `ptr`; `INVALID_MEMORY_ACCESS` if they
/// do not fit in memory.
fn written(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> i32 {
    if write(caller, ptr, bytes) {
        status::OK
    } else {
        status::INVALID_MEMORY_ACCESS
    }
}

/// Writes `bytes` at `ptr`; false if they do not fit in memory.
pub(super) fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(memory) = caller.data().memory() else {
        return false;
    };
    let start = ptr as u32 as usize;
    let Some(end) = start.checked_add(bytes.len()) else {
        return false;
    };
    match memory.data_mut(caller).get_mut(start..end) {
        Some(target) => {
            target.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// Hands `bytes` to the guest: copied into memory from its allocator, the
/// pointer and size written at `return_data` and `return_size`. Nothing
/// is allocated for no bytes (pointer and size 0).
async fn give(caller: &mut Ctx<'_>, bytes: &[u8], return_data: i32, return_size: i32) -> i32 {
    let ptr = if bytes.is_empty() {
        0
    } else {
        let Some(alloc) = caller.data().abi.alloc.clone() else {
            return status::INTERNAL_FAILURE;
        };
        let Ok(len) = i32::try_from(bytes.len()) else {
            return status::BAD_ARGUMENT;
        };
        match alloc.call_async(&mut *caller, len).await {
            Ok(ptr) if ptr != 0 => ptr,
            _ => return status::INVALID_MEMORY_ACCESS,
        }
    };
    if !bytes.is_empty() && !write(caller, ptr, bytes) {
        return status::INVALID_MEMORY_ACCESS;
    }
    let size = bytes.len() as u32;
    if write(caller, return_data, &(ptr as u32).to_le_bytes())
        && write(caller, return_size, &size.to_le_bytes())
    {
        status::OK
    } else {
        status::INVALID_MEMORY_ACCESS
    }
}

/// The header map `map` of the stream in progress.
fn map_of(stream: &mut Stream, map: i32) -> Option<&mut HeaderPairs> {
    match map {
        0 => Some(&mut stream.request),
        2 => stream.response.as_mut(),
        6 => stream.call_response.as_mut().map(|(headers, _)| headers),
        _ => None,
    }
}

/// Runs `edit` on header map `map`; NOT_FOUND outside an HTTP stream or
/// for a map this host does not keep.
fn with_map<T>(
    caller: &mut Ctx<'_>,
    map: i32,
    edit: impl FnOnce(&mut HeaderPairs) -> T,
) -> Result<T, i32> {
    let stream = caller
        .data_mut()
        .abi
        .stream
        .as_mut()
        .ok_or(status::NOT_FOUND)?;
    map_of(stream, map).map(edit).ok_or(status::NOT_FOUND)
}

/// The value of property `path` (segments separated by NUL).
fn property(state: &PwState, path: &str) -> Option<Vec<u8>> {
    let plugin = &state.plugin;
    match path {
        "plugin_name" => return Some(plugin.plugin_name.clone().into_bytes()),
        "plugin_root_id" => return Some(plugin.root_id.clone().into_bytes()),
        "plugin_vm_id" => return Some(plugin.vm_id.clone().into_bytes()),
        _ => {}
    }
    let stream = state.stream.as_ref()?;
    if let Some(value) = stream.properties.get(path) {
        return Some(value.clone());
    }
    let request = &stream.request;
    let path_and_query = request.get(":path").unwrap_or("");
    let (url_path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, query),
        None => (path_and_query, ""),
    };
    let value = match path {
        "request\0path" => path_and_query.to_string(),
        "request\0url_path" => url_path.to_string(),
        "request\0query" => query.to_string(),
        "request\0host" => request.get(":authority")?.to_string(),
        "request\0scheme" => request.get(":scheme")?.to_string(),
        "request\0method" => request.get(":method")?.to_string(),
        "request\0protocol" => stream.facts.protocol.clone(),
        "request\0id" => stream.facts.id.clone(),
        "source\0address" => stream.facts.source?.to_string(),
        "source\0port" => stream.facts.source?.port().to_string(),
        "destination\0address" => stream.facts.destination?.to_string(),
        "destination\0port" => stream.facts.destination?.port().to_string(),
        "response\0code" => stream.response.as_ref()?.get(":status")?.to_string(),
        other => {
            let name = other.strip_prefix("request\0headers\0")?;
            request.get(name)?.to_string()
        }
    };
    Some(value.into_bytes())
}

/// The current time in nanoseconds since the epoch.
fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Registers every hostcall `module` imports.
pub(super) fn add(linker: &mut Linker<Sandbox<PwState>>, module: &Module) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut caller: Ctx<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            let line = read_guest_line(&mut caller, ptr as u32, len as u32);
            let level = match level {
                0 => log::Level::Trace,
                1 => log::Level::Debug,
                2 => log::Level::Info,
                3 => log::Level::Warn,
                _ => log::Level::Error,
            };
            caller.data_mut().guest_log(level, line);
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut caller: Ctx<'_>, return_level: i32| -> i32 {
            let level: u32 = match log::max_level() {
                log::LevelFilter::Trace => 0,
                log::LevelFilter::Debug => 1,
                log::LevelFilter::Info => 2,
                log::LevelFilter::Warn => 3,
                _ => 4,
            };
            written(&mut caller, return_level, &level.to_le_bytes())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut caller: Ctx<'_>, return_time: i32| -> i32 {
            written(&mut caller, return_time, &now_nanos().to_le_bytes())
        },
    )?;
    linker.func_wrap_async(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: Ctx<'_>,
         (buffer, start, max_size, return_data, return_size): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let plugin = caller.data().abi.plugin.clone();
                let stream = caller.data().abi.stream.as_ref();
                let owned: Vec<u8> = match (buffer, stream) {
                    (0, Some(stream)) => stream.request_body.clone(),
                    (1, Some(stream)) => stream.response_body.clone(),
                    (4, Some(stream)) => match &stream.call_response {
                        Some((_, body)) => body.clone(),
                        None => return status::NOT_FOUND,
                    },
                    (6, _) => plugin.vm_config.clone(),
                    (7, _) => plugin.config.clone(),
                    _ => return status::NOT_FOUND,
                };
                let whole = &owned[..];
                // The SDKs pass u32::MAX as max_size: clamp to what there is.
                let start = (start as u32 as usize).min(whole.len());
                let end = start
                    .saturating_add(max_size as u32 as usize)
                    .min(whole.len());
                give(&mut caller, &whole[start..end], return_data, return_size).await
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut caller: Ctx<'_>, buffer: i32, return_size: i32, return_flags: i32| -> i32 {
            let plugin = caller.data().abi.plugin.clone();
            let stream = caller.data().abi.stream.as_ref();
            let size = match (buffer, stream) {
                (0, Some(stream)) => stream.request_body.len(),
                (1, Some(stream)) => stream.response_body.len(),
                (6, _) => plugin.vm_config.len(),
                (7, _) => plugin.config.len(),
                _ => return status::NOT_FOUND,
            } as u32;
            if write(&mut caller, return_size, &size.to_le_bytes())
                && write(&mut caller, return_flags, &0u32.to_le_bytes())
            {
                status::OK
            } else {
                status::INVALID_MEMORY_ACCESS
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut caller: Ctx<'_>,
         buffer: i32,
         start: i32,
         size: i32,
         data: i32,
         data_size: i32|
         -> i32 {
            let Some(data) = read(&mut caller, data, data_size) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let Some(stream) = caller.data_mut().abi.stream.as_mut() else {
                return status::NOT_FOUND;
            };
            let body = match buffer {
                0 => &mut stream.request_body,
                1 => &mut stream.response_body,
                _ => return status::NOT_FOUND,
            };
            // Replaces bytes [start, start + size), as the SDKs use it:
            // (0, len) for the whole body, (len, 0) to append.
            let start = (start as u32 as usize).min(body.len());
            let end = start.saturating_add(size as u32 as usize).min(body.len());
            if body.len() - (end - start) + data.len() > super::MAX_BODY {
                return status::BAD_ARGUMENT;
            }
            body.splice(start..end, data);
            status::OK
        },
    )?;
    linker.func_wrap_async(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: Ctx<'_>, (map, return_data, return_size): (i32, i32, i32)| {
            Box::new(async move {
                match with_map(&mut caller, map, |map| HeaderPairs::serialize(map.pairs())) {
                    Ok(bytes) => give(&mut caller, &bytes, return_data, return_size).await,
                    Err(status) => status,
                }
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut caller: Ctx<'_>, map: i32, return_size: i32| -> i32 {
            match with_map(&mut caller, map, |map| {
                HeaderPairs::serialize(map.pairs()).len()
            }) {
                Ok(size) if write(&mut caller, return_size, &(size as u32).to_le_bytes()) => {
                    status::OK
                }
                Ok(_) => status::INVALID_MEMORY_ACCESS,
                Err(status) => status,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: Ctx<'_>, map: i32, data: i32, size: i32| -> i32 {
            let Some(bytes) = read(&mut caller, data, size) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let Some(pairs) = HeaderPairs::deserialize(&bytes) else {
                return status::BAD_ARGUMENT;
            };
            match with_map(&mut caller, map, |map| map.set_all(pairs)) {
                Ok(()) => status::OK,
                Err(status) => status,
            }
        },
    )?;
    linker.func_wrap_async(
        "env",
        "proxy_get_header_map_value",
        |mut caller: Ctx<'_>,
         (map, key, key_size, return_data, return_size): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let Some(key) = read_str(&mut caller, key, key_size) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                match with_map(&mut caller, map, |map| map.get(&key).map(str::to_string)) {
                    Ok(Some(value)) => {
                        give(&mut caller, value.as_bytes(), return_data, return_size).await
                    }
                    Ok(None) => status::NOT_FOUND,
                    Err(status) => status,
                }
            })
        },
    )?;
    for (name, edit) in [
        (
            "proxy_add_header_map_value",
            HeaderPairs::add as fn(&mut HeaderPairs, &str, &str),
        ),
        ("proxy_replace_header_map_value", HeaderPairs::replace),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut caller: Ctx<'_>,
                  map: i32,
                  key: i32,
                  key_size: i32,
                  value: i32,
                  value_size: i32|
                  -> i32 {
                let (Some(key), Some(value)) = (
                    read_str(&mut caller, key, key_size),
                    read_str(&mut caller, value, value_size),
                ) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                match with_map(&mut caller, map, |map| edit(map, &key, &value)) {
                    Ok(()) => status::OK,
                    Err(status) => status,
                }
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Ctx<'_>, map: i32, key: i32, key_size: i32| -> i32 {
            let Some(key) = read_str(&mut caller, key, key_size) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            match with_map(&mut caller, map, |map| map.remove(&key)) {
                Ok(()) => status::OK,
                Err(status) => status,
            }
        },
    )?;
    linker.func_wrap_async(
        "env",
        "proxy_get_property",
        |mut caller: Ctx<'_>, (path, path_size, return_data, return_size): (i32, i32, i32, i32)| {
            Box::new(async move {
                let Some(path) = read_str(&mut caller, path, path_size) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                match property(&caller.data().abi, &path) {
                    Some(value) => give(&mut caller, &value, return_data, return_size).await,
                    None => status::NOT_FOUND,
                }
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: Ctx<'_>, path: i32, path_size: i32, value: i32, value_size: i32| -> i32 {
            let (Some(path), Some(value)) = (
                read_str(&mut caller, path, path_size),
                read(&mut caller, value, value_size),
            ) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            match caller.data_mut().abi.stream.as_mut() {
                Some(stream) => {
                    stream.properties.insert(path, value);
                    status::OK
                }
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: Ctx<'_>,
         status_code: i32,
         _details: i32,
         _details_size: i32,
         body: i32,
         body_size: i32,
         headers: i32,
         headers_size: i32,
         _grpc_status: i32|
         -> i32 {
            let (Some(body), Some(headers)) = (
                read(&mut caller, body, body_size),
                read(&mut caller, headers, headers_size),
            ) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let headers = if headers.is_empty() {
                Vec::new()
            } else {
                match HeaderPairs::deserialize(&headers) {
                    Some(pairs) => pairs,
                    None => return status::BAD_ARGUMENT,
                }
            };
            match caller.data_mut().abi.stream.as_mut() {
                Some(stream) => {
                    stream.local_reply = Some(crate::abi::LocalReply {
                        // Out of u16's range: 0, refused when checked.
                        status: u16::try_from(status_code as u32).unwrap_or(0),
                        headers,
                        body: body.into(),
                    });
                    status::OK
                }
                None => status::BAD_ARGUMENT,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut caller: Ctx<'_>, context: i32| -> i32 {
            caller.data_mut().abi.effective_context = context as u32;
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |caller: Ctx<'_>, period: i32| -> i32 {
            let period = u64::from(period as u32);
            caller
                .data()
                .abi
                .plugin
                .tick_period_ms
                .store(period, std::sync::atomic::Ordering::Relaxed);
            status::OK
        },
    )?;
    linker.func_wrap("env", "proxy_done", |_caller: Ctx<'_>| -> i32 {
        status::OK
    })?;
    // A request paused for HTTP calls goes on once the last call's
    // response is delivered, whether or not the filter resumes it (see
    // docs/PROXY_WASM.md); a response stream is never paused.
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |_caller: Ctx<'_>, _stream: i32| -> i32 { status::OK },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: Ctx<'_>,
         upstream: i32,
         upstream_size: i32,
         headers: i32,
         headers_size: i32,
         body: i32,
         body_size: i32,
         _trailers: i32,
         _trailers_size: i32,
         timeout_ms: i32,
         return_token: i32|
         -> i32 {
            let (Some(upstream), Some(headers), Some(body)) = (
                read_str(&mut caller, upstream, upstream_size),
                read(&mut caller, headers, headers_size),
                read(&mut caller, body, body_size),
            ) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let Some(headers) = HeaderPairs::deserialize(&headers) else {
                return status::BAD_ARGUMENT;
            };
            let has = |name: &str| headers.iter().any(|(n, _)| n == name);
            if !has(":method") || !has(":path") {
                return status::BAD_ARGUMENT;
            }
            let state = &mut caller.data_mut().abi;
            // An unknown cluster may name `ip:port` itself, as in
            // ngx_wasm_module.
            let Some(address) = state
                .plugin
                .clusters
                .get(&upstream)
                .copied()
                .or_else(|| upstream.parse().ok())
            else {
                return status::BAD_ARGUMENT;
            };
            let token = state.next_call_token;
            let Some(stream) = state.stream.as_mut() else {
                // Calls from the root context (e.g. in on_tick): not yet.
                return status::INTERNAL_FAILURE;
            };
            stream.calls.push(super::PendingCall {
                token,
                address,
                headers,
                body,
                timeout: std::time::Duration::from_millis(u64::from(timeout_ms as u32).max(1)),
            });
            state.next_call_token = token.wrapping_add(1).max(1);
            written(&mut caller, return_token, &token.to_le_bytes())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |_caller: Ctx<'_>, _stream: i32| -> i32 { status::OK },
    )?;
    linker.func_wrap_async(
        "env",
        "proxy_get_shared_data",
        |mut caller: Ctx<'_>,
         (key, key_size, return_data, return_size, return_cas): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let Some(key) = read_str(&mut caller, key, key_size) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let plugin = caller.data().abi.plugin.clone();
                let Some((value, cas)) = plugin.shared.get(&key) else {
                    return status::NOT_FOUND;
                };
                if !write(&mut caller, return_cas, &cas.to_le_bytes()) {
                    return status::INVALID_MEMORY_ACCESS;
                }
                give(&mut caller, &value, return_data, return_size).await
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut caller: Ctx<'_>,
         key: i32,
         key_size: i32,
         value: i32,
         value_size: i32,
         cas: i32|
         -> i32 {
            let (Some(key), Some(value)) = (
                read_str(&mut caller, key, key_size),
                read(&mut caller, value, value_size),
            ) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            if caller.data().abi.plugin.shared.set(&key, value, cas as u32) {
                status::OK
            } else {
                status::CAS_MISMATCH
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: Ctx<'_>, kind: i32, name: i32, name_size: i32, return_id: i32| -> i32 {
            let Some(name) = read_str(&mut caller, name, name_size) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            if !(0..=2).contains(&kind) {
                return status::BAD_ARGUMENT;
            }
            let id = caller.data().abi.plugin.metrics.define(&name);
            written(&mut caller, return_id, &id.to_le_bytes())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |caller: Ctx<'_>, id: i32, delta: i64| -> i32 {
            match caller.data().abi.plugin.metrics.get(id as u32) {
                Some(gauge) => {
                    gauge.add(delta);
                    status::OK
                }
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |caller: Ctx<'_>, id: i32, value: i64| -> i32 {
            match caller.data().abi.plugin.metrics.get(id as u32) {
                Some(gauge) => {
                    gauge.set(value);
                    status::OK
                }
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut caller: Ctx<'_>, id: i32, return_value: i32| -> i32 {
            let Some(value) = caller
                .data()
                .abi
                .plugin
                .metrics
                .get(id as u32)
                .map(|g| g.get())
            else {
                return status::NOT_FOUND;
            };
            written(&mut caller, return_value, &value.to_le_bytes())
        },
    )?;
    add_unimplemented(linker, module)
}

/// Links every hostcall the module imports that this host does not
/// implement, with its declared type, to return `INTERNAL_FAILURE`.
fn add_unimplemented(
    linker: &mut Linker<Sandbox<PwState>>,
    module: &Module,
) -> wasmtime::Result<()> {
    for import in module.imports() {
        if import.module() != "env" || !UNIMPLEMENTED.contains(&import.name()) {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else {
            continue;
        };
        linker.func_new("env", import.name(), ty, |_caller, _params, results| {
            for result in results.iter_mut() {
                *result = Val::I32(status::INTERNAL_FAILURE);
            }
            Ok(())
        })?;
    }
    Ok(())
}
