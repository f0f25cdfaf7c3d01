//! The `env.proxy_*` hostcalls a filter imports, registered from one
//! table ([`HOSTCALLS`]) that is also the list of what a filter may
//! import. Each hostcall is glue: it reads its arguments from guest
//! memory, calls the host logic on [`PwState`] (`state.rs`), and writes
//! the result back.
//!
//! Every pointer from the guest is bounds-checked: a bad one gets
//! `INVALID_MEMORY_ACCESS`, never a host panic. Data the host returns is
//! written into memory the guest's own allocator gave (the SDKs take
//! ownership of it): those hostcalls call back into the guest. Every
//! hostcall is synchronous, so a filter's callbacks run on the worker's
//! stack with no fiber (`WasmInstance::call_held`), and a call back into
//! the guest is a plain nested call.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Module, Val, WasmTy};

use super::stream::MAX_HEADER_PAIRS;
use super::types::{BufferType, LogLevel, MapType, MetricType, Status};
use super::{HeaderPairs, PwState};
use crate::abi::framing::{check_edit, check_method, check_replacement, Edit, Message};
use crate::abi::{grpc, LocalReply};
use wasm_runtime::{read_guest_line, Sandbox};

type Ctx<'a> = Caller<'a, Sandbox<PwState>>;
type PwLinker = Linker<Sandbox<PwState>>;

const ENV: &str = "env";

/// How this host links a hostcall.
#[derive(Clone, Copy)]
enum Support {
    /// Implemented: linked by this function.
    Linked(fn(&mut PwLinker) -> wasmtime::Result<()>),
    /// Not implemented yet: linked, with the type the module declares, to
    /// return `INTERNAL_FAILURE`, which the SDKs turn into an error where
    /// they expect a call to fail (HTTP and gRPC calls, foreign
    /// functions): `UNIMPLEMENTED` is not in the Rust SDK's status enum.
    Unimplemented,
}

/// The table of hostcalls from rows `name: how`, where `how` is `sync`
/// (glue `fn(Ctx, params...) -> Result<(), Status>`) or `unimplemented`.
macro_rules! hostcalls {
    ($($name:ident: $how:ident,)*) => {
        /// Every hostcall of the spec (and of the SDKs' import lists) a
        /// filter may import, and how this host links it.
        const HOSTCALLS: &[(&str, Support)] = &[$((stringify!($name), hostcalls!(@$how $name)),)*];
    };
    (@sync $name:ident) => {
        Support::Linked(|linker| Glue::link($name, linker, stringify!($name)))
    };
    (@unimplemented $name:ident) => {
        Support::Unimplemented
    };
}

hostcalls! {
    proxy_log: sync,
    proxy_get_log_level: sync,
    proxy_get_current_time_nanoseconds: sync,
    proxy_set_tick_period_milliseconds: sync,
    proxy_get_buffer_bytes: sync,
    proxy_get_buffer_status: sync,
    proxy_set_buffer_bytes: sync,
    proxy_get_header_map_pairs: sync,
    proxy_get_header_map_size: sync,
    proxy_set_header_map_pairs: sync,
    proxy_get_header_map_value: sync,
    proxy_add_header_map_value: sync,
    proxy_replace_header_map_value: sync,
    proxy_remove_header_map_value: sync,
    proxy_get_property: sync,
    proxy_set_property: sync,
    proxy_send_local_response: sync,
    proxy_http_call: sync,
    proxy_continue_stream: sync,
    proxy_close_stream: sync,
    proxy_set_effective_context: sync,
    proxy_done: sync,
    proxy_get_shared_data: sync,
    proxy_set_shared_data: sync,
    proxy_define_metric: sync,
    proxy_increment_metric: sync,
    proxy_record_metric: sync,
    proxy_get_metric: sync,
    proxy_grpc_call: sync,
    proxy_grpc_stream: sync,
    proxy_grpc_send: sync,
    proxy_grpc_cancel: sync,
    proxy_grpc_close: sync,
    proxy_get_status: sync,
    proxy_register_shared_queue: sync,
    proxy_resolve_shared_queue: sync,
    proxy_enqueue_shared_queue: sync,
    proxy_dequeue_shared_queue: sync,
    proxy_call_foreign_function: unimplemented,
    proxy_continue_request: unimplemented,
    proxy_continue_response: unimplemented,
    proxy_clear_route_cache: unimplemented,
}

/// Whether a filter may import `env.<name>`.
pub(super) fn provides(name: &str) -> bool {
    HOSTCALLS.iter().any(|(hostcall, _)| *hostcall == name)
}

/// Registers every hostcall: the implemented ones all, the others as
/// `module` imports them.
pub(super) fn add(linker: &mut PwLinker, module: &Module) -> wasmtime::Result<()> {
    for (_, support) in HOSTCALLS {
        if let Support::Linked(link) = support {
            link(linker)?;
        }
    }
    add_unimplemented(linker, module)
}

/// Links every hostcall the module imports that this host does not
/// implement, with its declared type, to return `INTERNAL_FAILURE`.
fn add_unimplemented(linker: &mut PwLinker, module: &Module) -> wasmtime::Result<()> {
    let unimplemented = |name: &str| {
        HOSTCALLS.iter().any(|(hostcall, support)| {
            *hostcall == name && matches!(support, Support::Unimplemented)
        })
    };
    for import in module.imports() {
        if import.module() != ENV || !unimplemented(import.name()) {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else {
            continue;
        };
        linker.func_new(ENV, import.name(), ty, |_caller, _params, results| {
            for result in results.iter_mut() {
                *result = Val::I32(Status::InternalFailure.into());
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Glue of a synchronous hostcall, linked with its wasm parameters.
trait Glue<Params> {
    /// Links it as `env.<name>`.
    fn link(self, linker: &mut PwLinker, name: &str) -> wasmtime::Result<()>;
}

/// [`Glue`] for functions of the caller and `N` wasm parameters.
macro_rules! glue_of_arity {
    ($($param:ident),*) => {
        impl<F, $($param: WasmTy),*> Glue<($($param,)*)> for F
        where
            F: Fn(Ctx<'_>, $($param),*) -> Result<(), Status> + Send + Sync + 'static,
        {
            #[allow(non_snake_case)]
            fn link(self, linker: &mut PwLinker, name: &str) -> wasmtime::Result<()> {
                linker.func_wrap(ENV, name, move |caller: Ctx<'_>, $($param: $param),*| -> i32 {
                    Status::code(self(caller, $($param),*))
                })?;
                Ok(())
            }
        }
    };
}

glue_of_arity!();
glue_of_arity!(P1);
glue_of_arity!(P1, P2);
glue_of_arity!(P1, P2, P3);
glue_of_arity!(P1, P2, P3, P4);
glue_of_arity!(P1, P2, P3, P4, P5);
glue_of_arity!(P1, P2, P3, P4, P5, P6);
glue_of_arity!(P1, P2, P3, P4, P5, P6, P7);
glue_of_arity!(P1, P2, P3, P4, P5, P6, P7, P8);
glue_of_arity!(P1, P2, P3, P4, P5, P6, P7, P8, P9);
glue_of_arity!(P1, P2, P3, P4, P5, P6, P7, P8, P9, P10);
glue_of_arity!(P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11, P12);

// Marshalling.

/// The instance's hostcall state.
fn state<'c>(caller: &'c Ctx<'_>) -> &'c PwState {
    &caller.data().abi
}

/// The instance's hostcall state, to change.
fn state_mut<'c>(caller: &'c mut Ctx<'_>) -> &'c mut PwState {
    &mut caller.data_mut().abi
}

/// What a hostcall copies out of guest memory onto the host heap, where
/// the instance's memory limit does not hold it; each has a most the host
/// copies. A guest's memory may be as large as its `memory_limit_mib`, so
/// without these one call could copy that much, and a value the host keeps
/// (a property, a header) would stay past the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Copied {
    /// A header name, property path, metric name, shared-data key or
    /// cluster name.
    Name,
    /// A header value or a property value.
    Value,
    /// A serialized header map (a replacement map, a callout's or a local
    /// reply's headers).
    HeaderMap,
    /// A body: buffer bytes, a callout's body, a local reply's body.
    Body,
    /// A shared-data value, also held to its tenant's `shared_data_bytes`.
    SharedValue,
}

impl Copied {
    /// The most the host copies, in bytes.
    pub(super) const fn max(self) -> usize {
        match self {
            Copied::Name => 16 << 10,
            Copied::Value => 64 << 10,
            Copied::HeaderMap | Copied::Body => 1 << 20,
            Copied::SharedValue => super::MAX_SHARED_DATA_BYTES as usize,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Copied::Name => "name",
            Copied::Value => "value",
            Copied::HeaderMap => "header map",
            Copied::Body => "body",
            Copied::SharedValue => "shared-data value",
        }
    }
}

/// `BAD_ARGUMENT` for a copy past its bound, with a line in the filter's
/// log (held to its log rate: the guest chooses how often).
fn too_large(caller: &mut Ctx<'_>, what: Copied, len: usize) -> Status {
    let line = format!(
        "hostcall refused: a {} of {len} bytes (the host copies at most {})",
        what.noun(),
        what.max()
    );
    caller.data_mut().guest_log(log::Level::Warn, line);
    Status::BadArgument
}

/// `BAD_ARGUMENT` for a header map of `fields` fields, past
/// [`MAX_HEADER_PAIRS`], with a line in the filter's log.
fn too_many_fields(caller: &mut Ctx<'_>, fields: usize) -> Status {
    let line = format!(
        "hostcall refused: a header map of {fields} fields (the host keeps at most \
         {MAX_HEADER_PAIRS})"
    );
    caller.data_mut().guest_log(log::Level::Warn, line);
    Status::BadArgument
}

/// The bytes at `(ptr, len)` in guest memory, at most `what`'s bound.
fn read(caller: &mut Ctx<'_>, ptr: i32, len: i32, what: Copied) -> Result<Vec<u8>, Status> {
    let len = len as u32 as usize;
    if len > what.max() {
        return Err(too_large(caller, what, len));
    }
    let memory = caller.data().memory().ok_or(Status::InvalidMemoryAccess)?;
    let start = ptr as u32 as usize;
    let end = start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    memory
        .data(&caller)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// The UTF-8 string at `(ptr, len)`, lossily, at most `what`'s bound.
fn read_str(caller: &mut Ctx<'_>, ptr: i32, len: i32, what: Copied) -> Result<String, Status> {
    let bytes = read(caller, ptr, len, what)?;
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned()))
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

/// Writes `bytes` at `ptr`, or `INVALID_MEMORY_ACCESS`.
fn written(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    if write(caller, ptr, bytes) {
        Ok(())
    } else {
        Err(Status::InvalidMemoryAccess)
    }
}

/// Hands `bytes` to the guest: copied into memory from its allocator, the
/// pointer and size written at `return_data` and `return_size`. Nothing
/// is allocated for no bytes (pointer and size 0).
fn give(
    caller: &mut Ctx<'_>,
    bytes: &[u8],
    return_data: i32,
    return_size: i32,
) -> Result<(), Status> {
    let ptr = if bytes.is_empty() {
        0
    } else {
        let alloc = state(caller).alloc.clone().ok_or(Status::InternalFailure)?;
        let len = i32::try_from(bytes.len()).map_err(|_| Status::BadArgument)?;
        let ptr = match alloc.call(&mut *caller, len) {
            Ok(ptr) if ptr != 0 => ptr,
            Ok(_) => return Err(Status::InvalidMemoryAccess),
            Err(trap) => {
                state_mut(caller).allocator_failed = Some(format!("{trap:#}"));
                return Err(Status::InvalidMemoryAccess);
            }
        };
        written(caller, ptr, bytes)?;
        ptr
    };
    written(caller, return_data, &(ptr as u32).to_le_bytes())?;
    written(caller, return_size, &(bytes.len() as u32).to_le_bytes())
}

// The hostcalls, in the table's order.

fn proxy_log(mut caller: Ctx<'_>, level: i32, ptr: i32, len: i32) -> Result<(), Status> {
    let line = read_guest_line(&mut caller, ptr as u32, len as u32);
    caller.data_mut().guest_log(LogLevel::of_line(level), line);
    Ok(())
}

fn proxy_get_log_level(mut caller: Ctx<'_>, return_level: i32) -> Result<(), Status> {
    let level = LogLevel::of_filter(log::max_level()) as u32;
    written(&mut caller, return_level, &level.to_le_bytes())
}

fn proxy_get_current_time_nanoseconds(mut caller: Ctx<'_>, return_time: i32) -> Result<(), Status> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    written(&mut caller, return_time, &now.to_le_bytes())
}

fn proxy_set_tick_period_milliseconds(caller: Ctx<'_>, period: i32) -> Result<(), Status> {
    state(&caller).set_tick_period(period as u32);
    Ok(())
}

fn proxy_get_buffer_bytes(
    mut ctx: Ctx<'_>,
    buffer: i32,
    start: i32,
    max_size: i32,
    return_data: i32,
    return_size: i32,
) -> Result<(), Status> {
    let caller = &mut ctx;
    let buffer = BufferType::try_from(buffer)?;
    let bytes = state(caller)
        .buffer_bytes(buffer, start as u32, max_size as u32)?
        .to_vec();
    // Nothing to give: OK, and nothing is written, as Envoy's host does
    // (the AssemblyScript SDK reads its configuration passing the
    // configuration's size as `return_size`, so for an empty one the
    // host must not write through it).
    if bytes.is_empty() {
        return Ok(());
    }
    give(caller, &bytes, return_data, return_size)
}

fn proxy_get_buffer_status(
    mut caller: Ctx<'_>,
    buffer: i32,
    return_size: i32,
    return_flags: i32,
) -> Result<(), Status> {
    let size = state(&caller).buffer_size(BufferType::try_from(buffer)?)? as u32;
    written(&mut caller, return_size, &size.to_le_bytes())?;
    written(&mut caller, return_flags, &0u32.to_le_bytes())
}

fn proxy_set_buffer_bytes(
    mut caller: Ctx<'_>,
    buffer: i32,
    start: i32,
    size: i32,
    data: i32,
    data_size: i32,
) -> Result<(), Status> {
    let data = read(&mut caller, data, data_size, Copied::Body)?;
    let buffer = BufferType::try_from(buffer)?;
    state_mut(&mut caller).set_buffer_bytes(buffer, start as u32, size as u32, data)
}

fn proxy_get_header_map_pairs(
    mut ctx: Ctx<'_>,
    map: i32,
    return_data: i32,
    return_size: i32,
) -> Result<(), Status> {
    let caller = &mut ctx;
    let map = state(caller).header_map(MapType::try_from(map)?)?;
    let bytes = map.serialize();
    give(caller, &bytes, return_data, return_size)
}

fn proxy_get_header_map_size(
    mut caller: Ctx<'_>,
    map: i32,
    return_size: i32,
) -> Result<(), Status> {
    let map = state(&caller).header_map(MapType::try_from(map)?)?;
    let size = map.serialized_len() as u32;
    written(&mut caller, return_size, &size.to_le_bytes())
}

fn proxy_set_header_map_pairs(
    mut caller: Ctx<'_>,
    map: i32,
    data: i32,
    size: i32,
) -> Result<(), Status> {
    let bytes = read(&mut caller, data, size, Copied::HeaderMap)?;
    // More than MAX_HEADER_PAIRS fields is refused as malformed.
    let pairs = HeaderPairs::deserialize(&bytes).ok_or(Status::BadArgument)?;
    let map = MapType::try_from(map)?;
    if let Some(message) = framed(map) {
        let old = state(&caller).header_map(map)?.to_pairs();
        let checked = check_replacement(message, &old, &pairs);
        refuse_framing(&mut caller, "proxy_set_header_map_pairs", checked)?;
    }
    state_mut(&mut caller).header_map_mut(map)?.set_all(pairs);
    Ok(())
}

fn proxy_get_header_map_value(
    mut ctx: Ctx<'_>,
    map: i32,
    key: i32,
    key_size: i32,
    return_data: i32,
    return_size: i32,
) -> Result<(), Status> {
    let caller = &mut ctx;
    let key = read_str(caller, key, key_size, Copied::Name)?;
    let map = state(caller).header_map(MapType::try_from(map)?)?;
    let value = map.get(&key).ok_or(Status::NotFound)?.to_string();
    give(caller, value.as_bytes(), return_data, return_size)
}

fn proxy_add_header_map_value(
    caller: Ctx<'_>,
    map: i32,
    key: i32,
    key_size: i32,
    value: i32,
    value_size: i32,
) -> Result<(), Status> {
    let value = (value, value_size);
    let edit = (
        Edit::Add,
        HeaderPairs::add as fn(&mut HeaderPairs, &str, &str),
    );
    edit_header_map(caller, map, (key, key_size), value, edit)
}

fn proxy_replace_header_map_value(
    caller: Ctx<'_>,
    map: i32,
    key: i32,
    key_size: i32,
    value: i32,
    value_size: i32,
) -> Result<(), Status> {
    let value = (value, value_size);
    let edit = (
        Edit::Set,
        HeaderPairs::replace as fn(&mut HeaderPairs, &str, &str),
    );
    edit_header_map(caller, map, (key, key_size), value, edit)
}

/// `edit` with the key and value at `key` and `value` on map `map`.
fn edit_header_map(
    mut caller: Ctx<'_>,
    map: i32,
    key: (i32, i32),
    value: (i32, i32),
    (kind, edit): (Edit, fn(&mut HeaderPairs, &str, &str)),
) -> Result<(), Status> {
    let key = read_str(&mut caller, key.0, key.1, Copied::Name)?;
    let value = read_str(&mut caller, value.0, value.1, Copied::Value)?;
    let map = MapType::try_from(map)?;
    let hostcall = match kind {
        Edit::Add => "proxy_add_header_map_value",
        _ => "proxy_replace_header_map_value",
    };
    checked_edit(&mut caller, hostcall, map, kind, &key)?;
    let pairs = state(&caller).header_map(map)?;
    let (fields, grown) = (
        pairs.len(),
        pairs.serialized_len() + key.len() + value.len() + 10,
    );
    if grown > Copied::HeaderMap.max() {
        return Err(too_large(&mut caller, Copied::HeaderMap, grown));
    }
    if fields >= MAX_HEADER_PAIRS {
        return Err(too_many_fields(&mut caller, fields + 1));
    }
    if map == MapType::HttpRequestHeaders && key.eq_ignore_ascii_case(":method") {
        let old = state(&caller).header_map(map)?.get(":method").unwrap_or("");
        let checked = check_method(old, &value);
        refuse_framing(&mut caller, hostcall, checked)?;
    }
    edit(state_mut(&mut caller).header_map_mut(map)?, &key, &value);
    Ok(())
}

fn proxy_remove_header_map_value(
    mut caller: Ctx<'_>,
    map: i32,
    key: i32,
    key_size: i32,
) -> Result<(), Status> {
    let key = read_str(&mut caller, key, key_size, Copied::Name)?;
    let map = MapType::try_from(map)?;
    let hostcall = "proxy_remove_header_map_value";
    checked_edit(&mut caller, hostcall, map, Edit::Remove, &key)?;
    state_mut(&mut caller).header_map_mut(map)?.remove(&key);
    Ok(())
}

/// The message whose framing the host keeps, if map `map` is one.
fn framed(map: MapType) -> Option<Message> {
    match map {
        MapType::HttpRequestHeaders => Some(Message::FilterRequest),
        MapType::HttpResponseHeaders | MapType::HttpResponseTrailers => Some(Message::Response),
        _ => None,
    }
}

/// Refuses an edit of a framing field ([`check_edit`]).
fn checked_edit(
    caller: &mut Ctx<'_>,
    hostcall: &str,
    map: MapType,
    edit: Edit,
    key: &str,
) -> Result<(), Status> {
    match framed(map) {
        Some(message) => refuse_framing(caller, hostcall, check_edit(message, edit, key)),
        None => Ok(()),
    }
}

/// `BAD_ARGUMENT` for a refused framing edit, with a line in the
/// filter's log (held to its log rate: the guest chooses how often).
fn refuse_framing(
    caller: &mut Ctx<'_>,
    hostcall: &str,
    checked: Result<(), String>,
) -> Result<(), Status> {
    checked.map_err(|why| {
        // `why` names only fields of the host's own list.
        let line = format!("{hostcall} refused: {why}");
        caller.data_mut().guest_log(log::Level::Warn, line);
        Status::BadArgument
    })
}

fn proxy_get_property(
    mut ctx: Ctx<'_>,
    path: i32,
    path_size: i32,
    return_data: i32,
    return_size: i32,
) -> Result<(), Status> {
    let caller = &mut ctx;
    let path = read_str(caller, path, path_size, Copied::Name)?;
    let value = state(caller).property(&path)?;
    give(caller, &value, return_data, return_size)
}

fn proxy_set_property(
    mut caller: Ctx<'_>,
    path: i32,
    path_size: i32,
    value: i32,
    value_size: i32,
) -> Result<(), Status> {
    let path = read_str(&mut caller, path, path_size, Copied::Name)?;
    let value = read(&mut caller, value, value_size, Copied::Value)?;
    state_mut(&mut caller).set_property(path, value)
}

#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    mut caller: Ctx<'_>,
    status_code: i32,
    _details: i32,
    _details_size: i32,
    body: i32,
    body_size: i32,
    headers: i32,
    headers_size: i32,
    grpc_status: i32,
) -> Result<(), Status> {
    let body = read(&mut caller, body, body_size, Copied::Body)?;
    let headers = read(&mut caller, headers, headers_size, Copied::HeaderMap)?;
    // No headers may come as no bytes at all.
    let headers = if headers.is_empty() {
        Vec::new()
    } else {
        HeaderPairs::deserialize(&headers).ok_or(Status::BadArgument)?
    };
    state_mut(&mut caller).send_local_response(LocalReply {
        // Out of u16's range: 0, refused when checked.
        status: u16::try_from(status_code as u32).unwrap_or(0),
        headers,
        body: body.into(),
        // -1 (the SDKs' "none") and codes past the last are none.
        grpc_status: u32::try_from(grpc_status)
            .ok()
            .filter(|code| *code <= grpc::MAX_STATUS),
    })
}

#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    mut caller: Ctx<'_>,
    upstream: i32,
    upstream_size: i32,
    headers: i32,
    headers_size: i32,
    body: i32,
    body_size: i32,
    _trailers: i32,
    _trailers_size: i32,
    timeout_ms: i32,
    return_token: i32,
) -> Result<(), Status> {
    let upstream = read_str(&mut caller, upstream, upstream_size, Copied::Name)?;
    let headers = read(&mut caller, headers, headers_size, Copied::HeaderMap)?;
    let body = read(&mut caller, body, body_size, Copied::Body)?;
    let headers = HeaderPairs::deserialize(&headers).ok_or(Status::BadArgument)?;
    let token =
        state_mut(&mut caller).dispatch_http_call(&upstream, headers, body, timeout_ms as u32)?;
    written(&mut caller, return_token, &token.to_le_bytes())
}

#[allow(clippy::too_many_arguments)]
fn proxy_grpc_call(
    mut caller: Ctx<'_>,
    upstream: i32,
    upstream_size: i32,
    service: i32,
    service_size: i32,
    method: i32,
    method_size: i32,
    metadata: i32,
    metadata_size: i32,
    message: i32,
    message_size: i32,
    timeout_ms: i32,
    return_token: i32,
) -> Result<(), Status> {
    let names = [
        (upstream, upstream_size),
        (service, service_size),
        (method, method_size),
        (metadata, metadata_size),
    ];
    let (upstream, service, method, metadata) = read_grpc_names(&mut caller, names)?;
    let message = read(&mut caller, message, message_size, Copied::Body)?;
    let token = state_mut(&mut caller).dispatch_grpc_call(
        &upstream,
        &service,
        &method,
        metadata,
        &message,
        timeout_ms as u32,
    )?;
    written(&mut caller, return_token, &token.to_le_bytes())
}

/// A gRPC call's cluster, service, method and metadata.
type GrpcNames = (String, String, String, Vec<(String, String)>);

/// What `proxy_grpc_call` and `proxy_grpc_stream` name, each at its
/// `(ptr, len)`: the cluster, the service, the method, and the metadata
/// (no metadata may come as no bytes at all; a malformed map is
/// `PARSE_FAILURE`, as Envoy answers).
fn read_grpc_names(
    caller: &mut Ctx<'_>,
    [upstream, service, method, metadata]: [(i32, i32); 4],
) -> Result<GrpcNames, Status> {
    let upstream = read_str(caller, upstream.0, upstream.1, Copied::Name)?;
    let service = read_str(caller, service.0, service.1, Copied::Name)?;
    let method = read_str(caller, method.0, method.1, Copied::Name)?;
    let metadata = read(caller, metadata.0, metadata.1, Copied::HeaderMap)?;
    let metadata = if metadata.is_empty() {
        Vec::new()
    } else {
        HeaderPairs::deserialize(&metadata).ok_or(Status::ParseFailure)?
    };
    Ok((upstream, service, method, metadata))
}

#[allow(clippy::too_many_arguments)]
fn proxy_grpc_stream(
    mut caller: Ctx<'_>,
    upstream: i32,
    upstream_size: i32,
    service: i32,
    service_size: i32,
    method: i32,
    method_size: i32,
    metadata: i32,
    metadata_size: i32,
    return_token: i32,
) -> Result<(), Status> {
    let names = [
        (upstream, upstream_size),
        (service, service_size),
        (method, method_size),
        (metadata, metadata_size),
    ];
    let (upstream, service, method, metadata) = read_grpc_names(&mut caller, names)?;
    let token = state_mut(&mut caller).open_grpc_stream(&upstream, &service, &method, metadata)?;
    written(&mut caller, return_token, &token.to_le_bytes())
}

fn proxy_grpc_send(
    mut caller: Ctx<'_>,
    token: i32,
    message: i32,
    message_size: i32,
    end_stream: i32,
) -> Result<(), Status> {
    let message = read(&mut caller, message, message_size, Copied::Body)?;
    state_mut(&mut caller).send_grpc_message(token as u32, &message, end_stream != 0)
}

fn proxy_grpc_cancel(mut caller: Ctx<'_>, token: i32) -> Result<(), Status> {
    state_mut(&mut caller).cancel_grpc(token as u32)
}

fn proxy_grpc_close(mut caller: Ctx<'_>, token: i32) -> Result<(), Status> {
    state_mut(&mut caller).close_grpc(token as u32)
}

/// The status of the gRPC call being closed, in `proxy_on_grpc_close`;
/// OK with no message anywhere else.
fn proxy_get_status(
    mut ctx: Ctx<'_>,
    return_code: i32,
    return_message: i32,
    return_message_size: i32,
) -> Result<(), Status> {
    let caller = &mut ctx;
    let (code, message) = state(caller).grpc_status();
    written(caller, return_code, &code.to_le_bytes())?;
    give(
        caller,
        message.as_bytes(),
        return_message,
        return_message_size,
    )
}

/// A request paused for HTTP calls goes on once the last call's response
/// is delivered, whether or not the filter resumes it (see
/// docs/PROXY_WASM.md); a response stream is never paused.
fn proxy_continue_stream(_caller: Ctx<'_>, _stream_type: i32) -> Result<(), Status> {
    Ok(())
}

/// Resets the HTTP stream in progress, as Envoy does for the request and
/// response stream types: once the callback returns, the connection is
/// closed without a response (or with the response cut). Outside an HTTP
/// context, or for the connection-level types: `BAD_ARGUMENT`.
fn proxy_close_stream(mut caller: Ctx<'_>, stream_type: i32) -> Result<(), Status> {
    // Request (0) and response (1); downstream (2) and upstream (3) name
    // TCP connections, which no filter here sees.
    if !(0..=1).contains(&stream_type) {
        return Err(Status::BadArgument);
    }
    state_mut(&mut caller).close_stream()
}

/// Nothing to switch: an instance serves one HTTP context at a time, and
/// a callback on the root context for a request (an HTTP call's response)
/// already sees that request's stream.
fn proxy_set_effective_context(_caller: Ctx<'_>, _context: i32) -> Result<(), Status> {
    Ok(())
}

/// The host ignores `proxy_on_done`'s result and always goes on.
fn proxy_done(_caller: Ctx<'_>) -> Result<(), Status> {
    Ok(())
}

fn proxy_get_shared_data(
    mut ctx: Ctx<'_>,
    key: i32,
    key_size: i32,
    return_data: i32,
    return_size: i32,
    return_cas: i32,
) -> Result<(), Status> {
    let caller = &mut ctx;
    let key = read_str(caller, key, key_size, Copied::Name)?;
    let (value, cas) = state(caller).shared_data(&key)?;
    written(caller, return_cas, &cas.to_le_bytes())?;
    give(caller, &value, return_data, return_size)
}

fn proxy_set_shared_data(
    mut caller: Ctx<'_>,
    key: i32,
    key_size: i32,
    value: i32,
    value_size: i32,
    cas: i32,
) -> Result<(), Status> {
    let key = read_str(&mut caller, key, key_size, Copied::Name)?;
    // A value larger than the tenant's whole store would be refused as a
    // full store is: refuse it before copying it.
    if value_size as u32 as u64 > state(&caller).shared_data_limit() {
        return Err(Status::InternalFailure);
    }
    let value = read(&mut caller, value, value_size, Copied::SharedValue)?;
    state(&caller).set_shared_data(&key, value, cas as u32)
}

fn proxy_register_shared_queue(
    mut caller: Ctx<'_>,
    name: i32,
    name_size: i32,
    return_token: i32,
) -> Result<(), Status> {
    let name = read_str(&mut caller, name, name_size, Copied::Name)?;
    let token = state(&caller).register_queue(&name)?;
    written(&mut caller, return_token, &token.to_le_bytes())
}

fn proxy_resolve_shared_queue(
    mut caller: Ctx<'_>,
    vm_id: i32,
    vm_id_size: i32,
    name: i32,
    name_size: i32,
    return_token: i32,
) -> Result<(), Status> {
    let vm_id = read_str(&mut caller, vm_id, vm_id_size, Copied::Name)?;
    let name = read_str(&mut caller, name, name_size, Copied::Name)?;
    let token = state(&caller).resolve_queue(&vm_id, &name)?;
    written(&mut caller, return_token, &token.to_le_bytes())
}

fn proxy_enqueue_shared_queue(
    mut caller: Ctx<'_>,
    token: i32,
    data: i32,
    data_size: i32,
) -> Result<(), Status> {
    let item = read(&mut caller, data, data_size, Copied::Body)?;
    state(&caller).enqueue(token as u32, item)
}

fn proxy_dequeue_shared_queue(
    mut ctx: Ctx<'_>,
    token: i32,
    return_data: i32,
    return_size: i32,
) -> Result<(), Status> {
    let caller = &mut ctx;
    let item = state(caller).dequeue(token as u32)?;
    give(caller, &item, return_data, return_size)
}

fn proxy_define_metric(
    mut caller: Ctx<'_>,
    kind: i32,
    name: i32,
    name_size: i32,
    return_id: i32,
) -> Result<(), Status> {
    let name = read_str(&mut caller, name, name_size, Copied::Name)?;
    MetricType::try_from(kind)?;
    let id = state(&caller).define_metric(&name)?;
    written(&mut caller, return_id, &id.to_le_bytes())
}

fn proxy_increment_metric(caller: Ctx<'_>, id: i32, delta: i64) -> Result<(), Status> {
    state(&caller).metric(id as u32)?.add(delta);
    Ok(())
}

fn proxy_record_metric(caller: Ctx<'_>, id: i32, value: i64) -> Result<(), Status> {
    state(&caller).metric(id as u32)?.set(value);
    Ok(())
}

fn proxy_get_metric(mut caller: Ctx<'_>, id: i32, return_value: i32) -> Result<(), Status> {
    let value = state(&caller).metric(id as u32)?.get();
    written(&mut caller, return_value, &value.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_documented_coverage() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROXY_WASM.md");
        let docs = std::fs::read_to_string(path).unwrap();
        // The hostcall table's rows: name and status.
        let rows: Vec<(&str, &str)> = docs
            .split("### Hostcalls (`env.proxy_*`)")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .unwrap()
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("| `")?.split_once('`')?;
                Some((name, rest.split('|').nth(1)?.trim()))
            })
            .collect();
        for (name, support) in HOSTCALLS {
            let status = rows.iter().find(|(row, _)| row == name).map(|(_, s)| *s);
            match (support, status) {
                (Support::Linked(_), Some(_)) => {}
                (Support::Unimplemented, Some(status)) => {
                    assert_eq!(status, "**not yet**", "{name}")
                }
                // Older SDK names, outside the spec's table.
                (Support::Unimplemented, None) => {
                    assert!(
                        docs.contains(&format!("`env.{name}`")),
                        "{name} is not documented"
                    )
                }
                (Support::Linked(_), None) => panic!("{name} has no row in docs/PROXY_WASM.md"),
            }
        }
        for (name, _) in &rows {
            assert!(provides(name), "{name} is documented but not in HOSTCALLS");
        }
        assert!(!provides("proxy_no_such_call"));
    }
}
