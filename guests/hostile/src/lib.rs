//! Test guest: a tenant's module gone wrong. It exports all five hooks and
//! proxies like first_proxy (to `upstream`; `request_filter`,
//! `response_filter` and `logging` change nothing), except that requests
//! whose path starts with `on_path` (default: all) meet the misbehaviour
//! named in its module config, in the hook named there:
//!
//! `{"upstream": "127.0.0.1:8080", "misbehave": "panic", "on_path": "/bad",
//!   "hook": "upstream_peer", "spin_iterations": 0}`
//!
//! Misbehaviours, in any hook: `none`, `loop`, `alloc` (without bound),
//! `panic`, `unreachable`, `recursion`, `oob_access` (a load past the end
//! of linear memory), `oob_output` (an output outside memory), `huge_output` (4 MiB of spaces), `invalid_json`,
//! `invalid_utf8`, `bad_header` (an invalid header in the hook's own
//! output: in `upstream_peer`, `upstream_request_filter` and `logging` a
//! whole `upstream_request` with a bad header name, in `request_filter`
//! `request_changes` inserting a bad header name, in `response_filter`
//! `response_changes` inserting a value with `\r\n`), and `spin`: slow but
//! legal, `spin_iterations` rounds of arithmetic, then an honest answer.
//! Only in `upstream_peer`: `bad_peer` (an address that does not parse).
//! Answers as `request_filter` gives them, written raw past the SDK's
//! checks (meant for `request_filter`, returned by whichever hook is
//! named): `bad_answer_header` (a header name with a space),
//! `bad_answer_status` (status 700), `huge_answer_body` (a 2 MiB body).
//!
//! `framing`: an edit of the framing fields, written raw (in
//! `request_filter`, `Content-Length: 0` on the downstream request; in
//! `upstream_request_filter`, `Content-Length: 5` and `Connection: close`
//! on the upstream request; in `response_filter`, a second
//! `Transfer-Encoding`). `method`: `request_filter` makes the method
//! `GET` (a `HEAD` request so changed would have its response framed as a
//! `GET`'s).
//!
//! `hook` picks the hook that misbehaves: `request_filter`,
//! `upstream_peer` (the default), `upstream_request_filter`,
//! `response_filter` or `logging`.

use std::cell::{Cell, OnceCell};
use std::hint::black_box;

use guest_sdk::entry::{self, hooks};
use guest_sdk::prelude::*;
use guest_sdk::sys;
use serde::Deserialize;

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Misbehaviour {
    None,
    Loop,
    Alloc,
    Panic,
    Unreachable,
    Recursion,
    OobAccess,
    OobOutput,
    HugeOutput,
    InvalidJson,
    InvalidUtf8,
    BadPeer,
    BadHeader,
    Spin,
    BadAnswerHeader,
    BadAnswerStatus,
    HugeAnswerBody,
    Framing,
    Method,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HookName {
    RequestFilter,
    UpstreamPeer,
    UpstreamRequestFilter,
    ResponseFilter,
    Logging,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    upstream: String,
    misbehave: Misbehaviour,
    on_path: String,
    hook: HookName,
    spin_iterations: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: "127.0.0.1:8080".into(),
            misbehave: Misbehaviour::None,
            on_path: "/".into(),
            hook: HookName::UpstreamPeer,
            spin_iterations: 0,
        }
    }
}

pub struct Hostile {
    config: Config,
}

thread_local! {
    static PROXY: OnceCell<Hostile> = const { OnceCell::new() };
    /// Set by a hook that wants its export to return a crafted output.
    static RAW_OUTPUT: Cell<Option<Misbehaviour>> = const { Cell::new(None) };
    /// The `huge_answer_body` output, once built.
    static HUGE_ANSWER: OnceCell<Vec<u8>> = const { OnceCell::new() };
}

impl Hostile {
    fn misbehave(&self, hook: HookName, session: &Session) -> Result<()> {
        if hook != self.config.hook
            || !session
                .req_header()
                .path()
                .starts_with(&self.config.on_path)
        {
            return Ok(());
        }
        match self.config.misbehave {
            Misbehaviour::None | Misbehaviour::BadPeer => {}
            Misbehaviour::Loop => loop {
                black_box(0);
            },
            Misbehaviour::Alloc => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    black_box(&hoard);
                }
            }
            Misbehaviour::Panic => panic!("hostile guest panics on purpose"),
            #[cfg(target_arch = "wasm32")]
            Misbehaviour::Unreachable => core::arch::wasm32::unreachable(),
            #[cfg(not(target_arch = "wasm32"))]
            Misbehaviour::Unreachable => std::process::abort(),
            Misbehaviour::Recursion => {
                black_box(recurse(black_box(1)));
            }
            Misbehaviour::OobAccess => {
                black_box(read_past_memory());
            }
            Misbehaviour::Spin => {
                black_box(spin(black_box(self.config.spin_iterations)));
            }
            raw => RAW_OUTPUT.set(Some(raw)),
        }
        Ok(())
    }
}

/// `rounds` of xorshift: work the optimiser cannot skip.
fn spin(rounds: u64) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// A load 16 bytes past the end of linear memory: the sandbox must trap it.
#[cfg(target_arch = "wasm32")]
fn read_past_memory() -> u8 {
    let end = core::arch::wasm32::memory_size(0) * 65536;
    // SAFETY: none by design: past linear memory the load traps, so no
    // value is ever produced.
    unsafe { core::ptr::read_volatile(black_box(end + 16) as *const u8) }
}

#[cfg(not(target_arch = "wasm32"))]
fn read_past_memory() -> u8 {
    std::process::abort()
}

fn recurse(n: u64) -> u64 {
    let frame = black_box([n; 16]);
    if n == 0 {
        return 0;
    }
    recurse(frame[3] + 1) + frame[7]
}

impl ProxyHttp for Hostile {
    type CTX = ();
    fn new_ctx(&self) {}

    fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        self.misbehave(HookName::RequestFilter, session)?;
        Ok(false)
    }

    fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        self.misbehave(HookName::UpstreamPeer, session)?;
        let bad = self.config.misbehave == Misbehaviour::BadPeer
            && session
                .req_header()
                .path()
                .starts_with(&self.config.on_path);
        let address = if bad {
            "not an address"
        } else {
            self.config.upstream.as_str()
        };
        Ok(Box::new(HttpPeer::new(address, false, String::new())))
    }

    fn upstream_request_filter(
        &self,
        session: &mut Session,
        _upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        self.misbehave(HookName::UpstreamRequestFilter, session)
    }

    fn response_filter(
        &self,
        session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        self.misbehave(HookName::ResponseFilter, session)
    }

    fn logging(&self, session: &mut Session, _e: Option<&Error>, _ctx: &mut ()) {
        // Nothing to return: the misbehaviour is all there is.
        let _ = self.misbehave(HookName::Logging, session);
    }
}

fn new(config: Config) -> Result<Hostile> {
    Ok(Hostile { config })
}

/// Replaces hook `hook`'s honest output with the crafted one it asked for.
fn crafted(honest: i64, hook: HookName) -> i64 {
    static INVALID_JSON: &[u8] = b"{\"peer\": {not json";
    static INVALID_UTF8: &[u8] = b"{\"peer\":\"\xff\xfe\"}";
    static BAD_HEADER: &[u8] =
        br#"{"upstream_request":{"method":"GET","uri":"/","headers":[["bad name","v"]]}}"#;
    static BAD_REQUEST_CHANGE: &[u8] =
        br#"{"request_changes":{"headers":[{"insert":["bad name","v"]}]}}"#;
    static BAD_RESPONSE_CHANGE: &[u8] =
        br#"{"response_changes":{"headers":[{"insert":["x-bad","a\r\nb"]}]}}"#;
    static BAD_ANSWER_HEADER: &[u8] =
        br#"{"response":{"status":200,"headers":[["bad name","v"]],"body":"bad header\n"}}"#;
    static BAD_ANSWER_STATUS: &[u8] = br#"{"response":{"status":700,"headers":[],"body":""}}"#;
    static FRAMING_REQUEST: &[u8] =
        br#"{"request_changes":{"headers":[{"insert":["Content-Length","0"]}]}}"#;
    static FRAMING_UPSTREAM: &[u8] = br#"{"upstream_changes":{"headers":[{"insert":["Content-Length","5"]},{"insert":["Connection","close"]}]}}"#;
    static FRAMING_RESPONSE: &[u8] =
        br#"{"response_changes":{"headers":[{"append":["Transfer-Encoding","chunked"]}]}}"#;
    static METHOD_GET: &[u8] = br#"{"request_changes":{"method":"GET"}}"#;
    let location = |bytes: &'static [u8]| sys::pack(bytes.as_ptr() as usize, bytes.len());
    match RAW_OUTPUT.take() {
        None => honest,
        Some(Misbehaviour::OobOutput) => sys::pack(0xffff_0000, 4096),
        Some(Misbehaviour::HugeOutput) => {
            let huge = vec![b' '; 4 << 20].leak();
            sys::pack(huge.as_ptr() as usize, huge.len())
        }
        Some(Misbehaviour::InvalidJson) => location(INVALID_JSON),
        Some(Misbehaviour::InvalidUtf8) => location(INVALID_UTF8),
        Some(Misbehaviour::BadHeader) => location(match hook {
            HookName::RequestFilter => BAD_REQUEST_CHANGE,
            HookName::ResponseFilter => BAD_RESPONSE_CHANGE,
            _ => BAD_HEADER,
        }),
        Some(Misbehaviour::BadAnswerHeader) => location(BAD_ANSWER_HEADER),
        Some(Misbehaviour::BadAnswerStatus) => location(BAD_ANSWER_STATUS),
        Some(Misbehaviour::Framing) => location(match hook {
            HookName::RequestFilter => FRAMING_REQUEST,
            HookName::ResponseFilter => FRAMING_RESPONSE,
            _ => FRAMING_UPSTREAM,
        }),
        Some(Misbehaviour::Method) => location(METHOD_GET),
        Some(Misbehaviour::HugeAnswerBody) => HUGE_ANSWER.with(|answer| {
            let answer = answer.get_or_init(huge_answer);
            sys::pack(answer.as_ptr() as usize, answer.len())
        }),
        Some(_) => honest,
    }
}

/// A local response with a 2 MiB body (over the host's 1 MiB), built
/// once and kept, so that the output outlives the call.
fn huge_answer() -> Vec<u8> {
    let mut answer = br#"{"response":{"status":200,"headers":[],"body":""#.to_vec();
    answer.resize(answer.len() + (2 << 20), b'a');
    answer.extend_from_slice(b"\"}}");
    answer
}

// Written out rather than by `export_proxy!`: each hook's output passes
// through `crafted`.

#[no_mangle]
pub extern "C" fn hook_abi_version() -> i32 {
    sys::ABI_VERSION
}

#[no_mangle]
pub extern "C" fn hook_alloc(len: i32) -> i32 {
    sys::alloc(len)
}

#[no_mangle]
pub extern "C" fn hook_init(ptr: i32, len: i32) -> i64 {
    entry::init(&PROXY, new, ptr, len)
}

#[no_mangle]
pub extern "C" fn request_filter(ptr: i32, len: i32) -> i64 {
    crafted(
        entry::run::<_, _, hooks::request_filter>(&PROXY, new, ptr, len),
        HookName::RequestFilter,
    )
}

#[no_mangle]
pub extern "C" fn upstream_peer(ptr: i32, len: i32) -> i64 {
    crafted(
        entry::run::<_, _, hooks::upstream_peer>(&PROXY, new, ptr, len),
        HookName::UpstreamPeer,
    )
}

#[no_mangle]
pub extern "C" fn upstream_request_filter(ptr: i32, len: i32) -> i64 {
    crafted(
        entry::run::<_, _, hooks::upstream_request_filter>(&PROXY, new, ptr, len),
        HookName::UpstreamRequestFilter,
    )
}

#[no_mangle]
pub extern "C" fn response_filter(ptr: i32, len: i32) -> i64 {
    crafted(
        entry::run::<_, _, hooks::response_filter>(&PROXY, new, ptr, len),
        HookName::ResponseFilter,
    )
}

#[no_mangle]
pub extern "C" fn logging(ptr: i32, len: i32) -> i64 {
    crafted(
        entry::run::<_, _, hooks::logging>(&PROXY, new, ptr, len),
        HookName::Logging,
    )
}
