//! # guest-sdk: write a Pingora proxy policy that runs as WebAssembly
//!
//! A guest is a `cdylib` built for `wasm32-unknown-unknown`. It implements
//! [`ProxyHttp`] (Pingora's trait, reduced to the hooks the host delegates:
//! `request_filter`, `upstream_peer`, `upstream_request_filter`,
//! `response_filter` and `logging`) and exports it with one macro line:
//!
//! ```
//! use guest_sdk::prelude::*;
//!
//! #[derive(Default)]
//! pub struct MyProxy;
//!
//! impl ProxyHttp for MyProxy {
//!     type CTX = ();
//!     fn new_ctx(&self) -> Self::CTX {}
//!
//!     fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
//!         let peer = Box::new(HttpPeer::new(("1.1.1.1", 443), true, "one.one.one.one".to_string()));
//!         Ok(peer)
//!     }
//!
//!     fn upstream_request_filter(
//!         &self,
//!         _session: &mut Session,
//!         upstream_request: &mut RequestHeader,
//!         _ctx: &mut Self::CTX,
//!     ) -> Result<()> {
//!         upstream_request.insert_header("Host", "one.one.one.one").unwrap();
//!         Ok(())
//!     }
//! }
//!
//! guest_sdk::export_proxy!(MyProxy);
//! ```
//!
//! The crate is layered, each layer using only those before it:
//!
//! - [`wire`]: the JSON types of the ABI, which the host reuses;
//! - [`sys`]: the raw ABI, with the host's imports, the input and output
//!   buffers and JSON in and out, on which a guest can be written by hand;
//! - [`http`]: the value types Pingora code reads (`req.uri.path()`,
//!   `resp.status.as_u16()`, `req.headers.get(..)`);
//! - [`proxy`]: the Pingora-shaped API a guest implements ([`ProxyHttp`],
//!   [`Session`], [`HttpPeer`], [`RequestHeader`], [`ResponseHeader`]);
//! - [`entry`]: the entry points that run a [`ProxyHttp`] hook on a call's
//!   input, one [`entry::GuestHook`] per hook;
//! - [`export_proxy!`]: the module's exports, calling [`entry`].
//!
//! The ABI itself (exports, JSON shapes, buffer ownership) is described in
//! `docs/ABI.md`.
#![deny(missing_docs)]

mod encode;
pub mod entry;
pub mod error;
pub mod http;
pub mod log;
pub mod proxy;
pub mod sys;
pub mod wire;

pub use bytes::Bytes;
pub use error::{BError, Error, ErrorType, Result};
pub use proxy::{
    HttpPeer, PeerOptions, ProxyHttp, RequestHeader, ResponseHeader, Session, ToPeerAddress, ALPN,
};
pub use sys::ABI_VERSION;

#[doc(hidden)]
pub use serde_json;

/// Everything a guest usually imports.
pub mod prelude {
    pub use crate::error::ErrorType::{self, HTTPStatus, InternalError};
    pub use crate::error::{BError, Error, Result};
    pub use crate::proxy::{
        HttpPeer, PeerOptions, ProxyHttp, RequestHeader, ResponseHeader, Session, ALPN,
    };
    pub use bytes::Bytes;
}

/// Where Pingora keeps [`ALPN`] (`pingora::protocols::ALPN`), so that its
/// import ports by the crate's name alone.
pub mod protocols {
    pub use crate::proxy::ALPN;
}

/// Exports a [`ProxyHttp`] implementation as the module's ABI v1 exports.
///
/// The forms:
///
/// - `export_proxy!(MyProxy)` builds the proxy with `Default`;
/// - `export_proxy!(MyProxy, constructor)` builds it by calling
///   `constructor(config)`, where `config` is the module configuration
///   (`--module-config`, `{}` when absent) decoded into the constructor's
///   argument type; a constructor's error stops the proxy's start-up;
/// - either followed by `hooks = [name, ...]` exports only the hooks named,
///   so the host calls (and the request pays for) only those: any of
///   `request_filter`, `upstream_peer`, `upstream_request_filter`,
///   `response_filter`, `response_trailer_filter` and `logging`. Without it, `upstream_peer` and
///   `upstream_request_filter` are exported. A hook not exported is not
///   called, whatever its [`ProxyHttp`] method does (without
///   `upstream_peer`, the host uses its own configured upstream).
///
/// `hook_abi_version`, `hook_alloc` and `hook_init` are always exported.
/// Each hook name is that of its export and of its [`ProxyHttp`] method, and
/// of its type in [`entry::hooks`]; a name not there does not compile.
///
/// ```
/// use guest_sdk::prelude::*;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// pub struct Config {
///     upstream: String,
/// }
///
/// pub struct Fixed {
///     upstream: String,
/// }
///
/// impl ProxyHttp for Fixed {
///     type CTX = ();
///     fn new_ctx(&self) {}
///
///     fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
///         Ok(Box::new(HttpPeer::new(&self.upstream, false, String::new())))
///     }
/// }
///
/// // The upstream request is never changed: no `upstream_request_filter`.
/// guest_sdk::export_proxy!(
///     Fixed,
///     |config: Config| Ok(Fixed { upstream: config.upstream }),
///     hooks = [upstream_peer]
/// );
/// ```
///
/// A name that is not a hook is an error:
///
/// ```compile_fail
/// # use guest_sdk::prelude::*;
/// # #[derive(Default)]
/// # pub struct MyProxy;
/// # impl ProxyHttp for MyProxy {
/// #     type CTX = ();
/// #     fn new_ctx(&self) {}
/// #     fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
/// #         Ok(Box::new(HttpPeer::new("127.0.0.1:80", false, String::new())))
/// #     }
/// # }
/// guest_sdk::export_proxy!(MyProxy, hooks = [upstream_peer, no_such_hook]);
/// ```
#[macro_export]
macro_rules! export_proxy {
    ($proxy:ty) => {
        $crate::export_proxy!($proxy, hooks = [upstream_peer, upstream_request_filter]);
    };
    // Before the `$constructor:expr` arms: `hooks = [..]` parses as an
    // assignment expression.
    ($proxy:ty, hooks = [$($hook:ident),* $(,)?]) => {
        $crate::export_proxy!(
            $proxy,
            |_: $crate::serde_json::Value| {
                ::core::result::Result::Ok(<$proxy as ::core::default::Default>::default())
            },
            hooks = [$($hook),*]
        );
    };
    ($proxy:ty, $constructor:expr, hooks = [$($hook:ident),* $(,)?]) => {
        const _: () = {
            ::std::thread_local! {
                static PROXY: ::core::cell::OnceCell<$proxy> =
                    const { ::core::cell::OnceCell::new() };
            }

            #[no_mangle]
            pub extern "C" fn hook_abi_version() -> i32 {
                $crate::sys::ABI_VERSION
            }

            #[no_mangle]
            pub extern "C" fn hook_alloc(len: i32) -> i32 {
                $crate::sys::alloc(len)
            }

            #[no_mangle]
            pub extern "C" fn hook_init(ptr: i32, len: i32) -> i64 {
                $crate::entry::init(&PROXY, $constructor, ptr, len)
            }

            $(
                #[no_mangle]
                pub extern "C" fn $hook(ptr: i32, len: i32) -> i64 {
                    $crate::entry::run::<$proxy, _, $crate::entry::hooks::$hook>(
                        &PROXY,
                        $constructor,
                        ptr,
                        len,
                    )
                }
            )*
        };
    };
    ($proxy:ty, $constructor:expr) => {
        $crate::export_proxy!(
            $proxy,
            $constructor,
            hooks = [upstream_peer, upstream_request_filter]
        );
    };
}
