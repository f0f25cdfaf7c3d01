//! # guest-sdk: write a Pingora proxy policy that runs as WebAssembly
//!
//! A guest is a `cdylib` built for `wasm32-unknown-unknown`. It implements
//! [`ProxyHttp`] (Pingora's trait, reduced to the two hooks the host
//! delegates) and exports it with one macro line:
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
//! The ABI itself (exports, JSON shapes, buffer ownership) is described in
//! `docs/ABI.md`; [`wire`] holds its types, which the host reuses.
#![deny(missing_docs)]

mod encode;
pub mod error;
pub mod log;
pub mod proxy;
#[doc(hidden)]
pub mod rt;
pub mod wire;

pub use error::{BError, Error, ErrorType, Result};
pub use proxy::{HttpPeer, PeerOptions, ProxyHttp, RequestHeader, Session, ToPeerAddress};
pub use rt::ABI_VERSION;

#[doc(hidden)]
pub use serde_json;

/// Everything a guest usually imports.
pub mod prelude {
    pub use crate::error::ErrorType::{self, HTTPStatus, InternalError};
    pub use crate::error::{BError, Error, Result};
    pub use crate::proxy::{HttpPeer, PeerOptions, ProxyHttp, RequestHeader, Session};
}

/// Exports a [`ProxyHttp`] implementation as the module's ABI v1 hooks.
///
/// `export_proxy!(MyProxy)` builds the proxy with `Default`;
/// `export_proxy!(MyProxy, constructor)` builds it by calling
/// `constructor(config)`, where `config` is the module configuration
/// (`--module-config`, `{}` when absent) decoded into the constructor's
/// argument type. A constructor's error stops the proxy's start-up.
#[macro_export]
macro_rules! export_proxy {
    ($proxy:ty) => {
        $crate::export_proxy!($proxy, |_: $crate::serde_json::Value| {
            Ok(<$proxy as ::core::default::Default>::default())
        });
    };
    ($proxy:ty, $constructor:expr) => {
        const _: () = {
            ::std::thread_local! {
                static PROXY: ::core::cell::OnceCell<$proxy> =
                    const { ::core::cell::OnceCell::new() };
            }

            #[no_mangle]
            pub extern "C" fn hook_abi_version() -> i32 {
                $crate::ABI_VERSION
            }

            #[no_mangle]
            pub extern "C" fn hook_alloc(len: i32) -> i32 {
                $crate::rt::alloc(len)
            }

            #[no_mangle]
            pub extern "C" fn hook_init(ptr: i32, len: i32) -> i64 {
                $crate::rt::init(&PROXY, $constructor, ptr, len)
            }

            #[no_mangle]
            pub extern "C" fn upstream_peer(ptr: i32, len: i32) -> i64 {
                $crate::rt::upstream_peer(&PROXY, $constructor, ptr, len)
            }

            #[no_mangle]
            pub extern "C" fn upstream_request_filter(ptr: i32, len: i32) -> i64 {
                $crate::rt::upstream_request_filter(&PROXY, $constructor, ptr, len)
            }
        };
    };
}
