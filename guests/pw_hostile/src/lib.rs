//! Test filter: a proxy-wasm (ABI v0.2.1) HTTP filter gone wrong, written
//! with the `proxy-wasm` crate and built for `wasm32-wasip1`.
//!
//! Configuration: the plugin configuration is JSON, every field optional:
//!
//! `{"misbehave": "panic", "in": "request_headers", "on_path": "/bad"}`
//!
//! - `misbehave`: `none` (the default), `panic` (a Rust panic: the SDK's
//!   panic hook logs the message through `env.proxy_log` at level 5
//!   (Critical), then the module aborts with a trap), `loop` (loops
//!   forever), `alloc` (grows a `Vec` of 1 MiB chunks, each written to,
//!   without bound until allocation fails, which aborts with a trap),
//!   `forge` (logs lines that try to forge proxy log lines, then a flood
//!   of 3,000 lines, and carries on), `framing` (tries to edit the
//!   framing fields of the request in `on_http_request_headers` and of the
//!   response in `on_http_response_headers`, through the raw hostcalls,
//!   and reports each hostcall's status in an `x-framing` header of the
//!   message it edited; `in` is ignored), `flood` (in
//!   `on_http_request_headers`, floods properties, request headers,
//!   shared data and metrics, and tries copies past the host's bounds,
//!   through the raw hostcalls; reports how far each went in an `x-flood`
//!   request header; `in` is ignored), `close` (resets the stream with
//!   `proxy_close_stream(0)` and returns).
//! - `in`: where it misbehaves: `request_headers` (the default, in
//!   `on_http_request_headers`), `request_body` (`on_http_request_body`,
//!   on the last piece: it buffers the pieces before it),
//!   `response_headers` (`on_http_response_headers`), `response_body`
//!   (`on_http_response_body`), `log` (`on_log`), `configure`
//!   (`on_configure`, for every instance, regardless of `on_path`) or
//!   `tick` (`on_tick`: `on_configure` then asks for a tick every 10 ms).
//! - `on_path`: a prefix of `:path` (default `/`, i.e. every request).
//!   `:path` is read in `on_http_request_headers` and whether it matches is
//!   remembered in the request's context; a request whose
//!   `on_http_request_headers` never ran does not match.
//!
//! An empty (or absent) configuration means all defaults, i.e. a plain
//! pass-through. A configuration that is not JSON of this shape (unknown
//! fields included) makes `on_configure` return false.
//!
//! Just before misbehaving it logs `pw_hostile: <misbehave> in <in>` at warn
//! (e.g. `pw_hostile: loop in response_headers`); a panic's message, logged
//! by the SDK's panic hook, is `panicked at <file>:<line>:<col>:\n
//! pw_hostile: panic in <in>`. `alloc` ends in std's allocation-failure
//! path, not the SDK's: std writes `memory allocation of 1048576 bytes
//! failed\n` to fd 2 (`wasi_snapshot_preview1.fd_write`), reads the
//! environment (`environ_sizes_get`, for `RUST_BACKTRACE`), writes a
//! `note: run with RUST_BACKTRACE=1 ...` line to fd 2, then aborts (an
//! `unreachable` trap); so the host's WASI functions must cope with being
//! called. Otherwise every callback is a pass-through: `Continue`, no
//! changes. After any trap the instance is unusable: the SDK's dispatcher
//! stays borrowed, so every later callback panics (`RefCell already
//! borrowed`).

use std::hint::black_box;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(PwHostileRoot {
            config: Config::default(),
        })
    });
}}

/// What goes wrong.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub enum Misbehaviour {
    #[default]
    None,
    Panic,
    Loop,
    Alloc,
    /// Logs forged lines (a newline and a fake proxy line, U+2028, a
    /// bidi override), then 3,000 more lines, and carries on.
    Forge,
    /// Edits framing fields and reports the statuses.
    Framing,
    /// Floods what the host keeps for it and reports how far it got.
    Flood,
    /// Resets the stream (`proxy_close_stream(0)`) where it misbehaves.
    Close,
}

/// Where it goes wrong.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub enum Callback {
    #[default]
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Log,
    Configure,
    Tick,
}

impl Misbehaviour {
    /// The name the configuration uses.
    fn name(self) -> &'static str {
        match self {
            Misbehaviour::None => "none",
            Misbehaviour::Panic => "panic",
            Misbehaviour::Loop => "loop",
            Misbehaviour::Alloc => "alloc",
            Misbehaviour::Forge => "forge",
            Misbehaviour::Framing => "framing",
            Misbehaviour::Flood => "flood",
            Misbehaviour::Close => "close",
        }
    }
}

impl Callback {
    /// The name the configuration uses.
    fn name(self) -> &'static str {
        match self {
            Callback::RequestHeaders => "request_headers",
            Callback::RequestBody => "request_body",
            Callback::ResponseHeaders => "response_headers",
            Callback::ResponseBody => "response_body",
            Callback::Log => "log",
            Callback::Configure => "configure",
            Callback::Tick => "tick",
        }
    }
}

/// The plugin configuration.
#[derive(Deserialize, Clone, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub misbehave: Misbehaviour,
    #[serde(rename = "in")]
    pub callback: Callback,
    pub on_path: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            misbehave: Misbehaviour::None,
            callback: Callback::RequestHeaders,
            on_path: String::from("/"),
        }
    }
}

/// Does what `misbehave` says; returns only for `none` and `forge`.
fn misbehave(misbehave: Misbehaviour, callback: Callback) {
    if matches!(
        misbehave,
        Misbehaviour::None | Misbehaviour::Framing | Misbehaviour::Flood
    ) {
        return;
    }
    if misbehave == Misbehaviour::Forge {
        log::warn!(
            "pw_hostile: forged\n[2026-01-01T00:00:00Z ERROR host::proxy] tenant victim: FORGED\u{2028}FORGED2 \u{202e}desrever"
        );
        for line in 0..3000 {
            log::info!("pw_hostile: flood {line}");
        }
        return;
    }
    log::warn!("pw_hostile: {} in {}", misbehave.name(), callback.name());
    match misbehave {
        Misbehaviour::None | Misbehaviour::Forge | Misbehaviour::Framing | Misbehaviour::Flood => {}
        Misbehaviour::Close => flood::close_stream(),
        Misbehaviour::Panic => panic!("pw_hostile: panic in {}", callback.name()),
        Misbehaviour::Loop => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        Misbehaviour::Alloc => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1; 1 << 20]);
                black_box(&hoard);
            }
        }
    }
}

/// The plugin's root context: holds the configuration.
struct PwHostileRoot {
    config: Config,
}

impl Context for PwHostileRoot {}

impl RootContext for PwHostileRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = if bytes.iter().all(u8::is_ascii_whitespace) {
            Config::default()
        } else {
            match serde_json::from_slice::<Config>(&bytes) {
                Ok(config) => config,
                Err(e) => {
                    log::error!("pw_hostile: bad configuration: {e}");
                    return false;
                }
            }
        };
        if config.callback == Callback::Configure {
            misbehave(config.misbehave, Callback::Configure);
        }
        if config.callback == Callback::Tick {
            self.set_tick_period(std::time::Duration::from_millis(10));
        }
        self.config = config;
        true
    }

    fn on_tick(&mut self) {
        if self.config.callback == Callback::Tick {
            misbehave(self.config.misbehave, Callback::Tick);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PwHostile {
            config: self.config.clone(),
            matched: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request's context.
struct PwHostile {
    config: Config,
    /// Whether `:path` starts with `on_path`, set in `on_http_request_headers`.
    matched: bool,
}

impl PwHostile {
    fn misbehave_in(&self, callback: Callback) {
        if self.matched && self.config.callback == callback {
            misbehave(self.config.misbehave, callback);
        }
    }
}

impl Context for PwHostile {}

impl HttpContext for PwHostile {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.matched = path.starts_with(&self.config.on_path);
        self.misbehave_in(Callback::RequestHeaders);
        if self.matched && self.config.misbehave == Misbehaviour::Framing {
            let statuses = framing::edit(framing::REQUEST_HEADERS, framing::ON_REQUEST);
            self.set_http_request_header("x-framing", Some(&statuses));
        }
        if self.matched && self.config.misbehave == Misbehaviour::Flood {
            let report = flood::run();
            self.set_http_request_header("x-flood", Some(&report));
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        // It buffers the whole body, then misbehaves on the last piece.
        if !end_of_stream {
            return Action::Pause;
        }
        self.misbehave_in(Callback::RequestBody);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.misbehave_in(Callback::ResponseHeaders);
        if self.matched && self.config.misbehave == Misbehaviour::Framing {
            let statuses = framing::edit(framing::RESPONSE_HEADERS, framing::ON_RESPONSE);
            self.set_http_response_header("x-framing", Some(&statuses));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.misbehave_in(Callback::ResponseBody);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.misbehave_in(Callback::Log);
    }
}

/// Framing edits through the raw hostcalls, whose statuses the SDK's
/// wrappers would turn into a panic.
mod framing {
    /// The request's header map.
    pub(crate) const REQUEST_HEADERS: u32 = 0;
    /// The response's header map.
    pub(crate) const RESPONSE_HEADERS: u32 = 2;

    /// An edit: `set`, `add` or `remove`, a name and a value.
    type Edit = (&'static str, &'static str, &'static str);

    /// What is tried on the request: every edit is the host's to refuse
    /// but the last two.
    pub(crate) const ON_REQUEST: &[Edit] = &[
        ("set", "content-length", "0"),
        ("add", "transfer-encoding", "chunked"),
        ("remove", "content-length", ""),
        ("set", "connection", "close"),
        ("add", "upgrade", "h2c"),
        ("set", "te", "trailers"),
        ("add", "keep-alive", "timeout=1"),
        ("add", "proxy-connection", "close"),
        ("add", "host", "second.example"),
        ("remove", ":authority", ""),
        ("remove", "host", ""),
        ("set", ":method", "HEAD"),
        ("set", "host", "renamed.example"),
        ("set", "x-allowed", "1"),
    ];

    /// What is tried on the response: removing `content-length` is
    /// allowed.
    pub(crate) const ON_RESPONSE: &[Edit] = &[
        ("set", "content-length", "1"),
        ("add", "transfer-encoding", "chunked"),
        ("set", "connection", "close"),
        ("remove", "content-length", ""),
    ];

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_add_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    }

    /// Makes `edits` on map `map`; returns `name=status` for each,
    /// space-separated (`set:content-length=2 ...`).
    pub(crate) fn edit(map: u32, edits: &[Edit]) -> String {
        let mut statuses = Vec::new();
        for (edit, name, value) in edits {
            let (key, key_size) = (name.as_ptr(), name.len());
            let (data, size) = (value.as_ptr(), value.len());
            // SAFETY: the pointers and sizes are those of live `&str`s; the
            // host only reads them during the call.
            let status = unsafe {
                match *edit {
                    "set" => proxy_replace_header_map_value(map, key, key_size, data, size),
                    "add" => proxy_add_header_map_value(map, key, key_size, data, size),
                    _ => proxy_remove_header_map_value(map, key, key_size),
                }
            };
            statuses.push(format!("{edit}:{name}={status}"));
        }
        statuses.join(" ")
    }
}

/// Floods what the host keeps for a filter through the raw hostcalls, and
/// reports how far each went.
mod flood {
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_close_stream(stream_type: u32) -> u32;
        fn proxy_set_property(
            path: *const u8,
            path_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_add_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        fn proxy_define_metric(
            kind: u32,
            name: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        fn proxy_http_call(
            upstream: *const u8,
            upstream_size: usize,
            headers: *const u8,
            headers_size: usize,
            body: *const u8,
            body_size: usize,
            trailers: *const u8,
            trailers_size: usize,
            timeout_ms: u32,
            return_token: *mut u32,
        ) -> u32;
    }

    // Safe wrappers. SAFETY (each): the pointers and sizes are those of
    // live slices, which the host only reads during the call; the
    // `return_*` pointers are those of live `u32`s the host writes.

    fn set_property(path: &[u8], value: &[u8]) -> u32 {
        // SAFETY: see above.
        unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) }
    }

    fn add_request_header(key: &[u8], value: &[u8]) -> u32 {
        // SAFETY: see above.
        unsafe {
            proxy_add_header_map_value(0, key.as_ptr(), key.len(), value.as_ptr(), value.len())
        }
    }

    fn remove_request_header(key: &[u8]) -> u32 {
        // SAFETY: see above.
        unsafe { proxy_remove_header_map_value(0, key.as_ptr(), key.len()) }
    }

    fn set_shared_data(key: &[u8], value: &[u8]) -> u32 {
        // SAFETY: see above.
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), 0) }
    }

    /// Resets the HTTP stream in progress.
    pub(crate) fn close_stream() {
        // SAFETY: no pointers.
        unsafe { proxy_close_stream(0) };
    }

    fn define_counter(name: &[u8]) -> u32 {
        let mut id = 0u32;
        // SAFETY: see above.
        unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) }
    }

    fn http_call(cluster: &[u8], body: &[u8]) -> u32 {
        let no_headers = [0u8; 4];
        let mut token = 0u32;
        // SAFETY: see above; no trailers: a null pointer with size 0.
        unsafe {
            proxy_http_call(
                cluster.as_ptr(),
                cluster.len(),
                no_headers.as_ptr(),
                no_headers.len(),
                body.as_ptr(),
                body.len(),
                std::ptr::null(),
                0,
                1000,
                &mut token,
            )
        }
    }

    /// Calls `attempt(i)` for i in `0..tries` until it returns a status
    /// other than OK: `<how many were OK>+<the status that stopped it>`
    /// (`+0` if none did).
    fn until_refused(tries: usize, mut attempt: impl FnMut(usize) -> u32) -> String {
        for i in 0..tries {
            let status = attempt(i);
            if status != 0 {
                return format!("{i}+{status}");
            }
        }
        format!("{tries}+0")
    }

    /// The report: `name=result` pairs, space-separated.
    pub(crate) fn run() -> String {
        let big_value = vec![b'v'; (64 << 10) + 1];
        let big_name = vec![b'n'; (16 << 10) + 1];
        let big_body = vec![b'b'; (1 << 20) + 1];
        let value_64k = vec![b's'; 64 << 10];
        let mut report = Vec::new();
        let status = set_property(b"x.big", &big_value);
        report.push(format!("big-property={status}"));
        let properties = until_refused(300, |i| set_property(format!("x.p{i}").as_bytes(), b"v"));
        report.push(format!("properties={properties}"));
        let status = add_request_header(b"x-big", &big_value);
        report.push(format!("big-header={status}"));
        let headers = until_refused(1100, |i| {
            add_request_header(format!("x-f{i}").as_bytes(), b"v")
        });
        for i in 0..1100 {
            remove_request_header(format!("x-f{i}").as_bytes());
        }
        let stopped = headers.split('+').nth(1).unwrap_or_default().to_string();
        report.push(format!("headers-stopped={stopped}"));
        let shared = until_refused(100, |i| {
            set_shared_data(format!("flood{i}").as_bytes(), &value_64k)
        });
        report.push(format!("shared={shared}"));
        let metrics = until_refused(100, |i| define_counter(format!("flood_{i}").as_bytes()));
        report.push(format!("metrics={metrics}"));
        report.push(format!("big-metric-name={}", define_counter(&big_name)));
        report.push(format!("big-callout={}", http_call(b"anywhere", &big_body)));
        report.join(" ")
    }
}
