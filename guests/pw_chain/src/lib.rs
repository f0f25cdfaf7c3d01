//! Test filter: a proxy-wasm (ABI v0.2.1) HTTP filter written with the
//! `proxy-wasm` crate, built for the default `wasm32-unknown-unknown`
//! target, so the SDK's allocator is exported as `malloc` (not
//! `proxy_on_memory_allocate`) and the module has no WASI imports.
//!
//! Configuration: the plugin configuration is the instance's name (e.g.
//! `a`), UTF-8 and usable in a header name. An empty (or absent) or
//! non-UTF-8 configuration makes `on_configure` return false: the host
//! must refuse to start the filter.
//!
//! Per request:
//! - `on_http_request_headers`: appends `,<name>` to request header
//!   `x-pw-chain` (replacing it with `<old>,<name>`), or sets it to `<name>`
//!   if absent; returns `Continue`.
//! - `on_http_response_headers`: adds response header `x-pw-chain-<name>: 1`;
//!   returns `Continue`.
//!
//! So instances `a` then `b` in a chain send `x-pw-chain: a,b` upstream.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(PwChainRoot {
            name: String::new(),
        })
    });
}}

/// The plugin's root context: holds the instance's name.
struct PwChainRoot {
    name: String,
}

impl Context for PwChainRoot {}

impl RootContext for PwChainRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match String::from_utf8(bytes) {
            Ok(name) if !name.is_empty() => {
                self.name = name;
                true
            }
            _ => {
                log::error!("pw_chain: the configuration must be a non-empty UTF-8 name");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PwChain {
            name: self.name.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request's context.
struct PwChain {
    name: String,
}

impl Context for PwChain {}

impl HttpContext for PwChain {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let chain = match self.get_http_request_header("x-pw-chain") {
            Some(chain) => format!("{chain},{}", self.name),
            None => self.name.clone(),
        };
        self.set_http_request_header("x-pw-chain", Some(&chain));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header(&format!("x-pw-chain-{}", self.name), "1");
        Action::Continue
    }
}
