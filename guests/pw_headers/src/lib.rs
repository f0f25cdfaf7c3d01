//! Test filter: an unmodified proxy-wasm (ABI v0.2.1) HTTP filter written
//! with the `proxy-wasm` crate from crates.io, built for `wasm32-wasip1`.
//! It exercises the header-map hostcalls, local responses and logging.
//!
//! Configuration: the plugin configuration, read in `on_configure` as a
//! UTF-8 string; an empty (or absent) one counts as `default`. The
//! configuration `refuse` (exactly) makes `on_configure` return false, so
//! the host must refuse to start the filter; so does a configuration that
//! is not UTF-8. The root context logs `pw_headers: configured <config>` at
//! info.
//!
//! Per request:
//! - `on_http_request_headers`: reads `:path` and `:method` (empty if
//!   absent). If `:path` starts with `/deny`, sends the local response
//!   `403` with header `x-pw-denied: 1` and body `denied by pw_headers\n`
//!   (`send_http_response`) and returns `Pause`. Otherwise adds request
//!   header `x-pw-path: <path>`, sets (replaces) request header
//!   `x-pw-method: <method>`, removes request headers `x-remove-me` and
//!   `x-never-there` (the second is normally absent, which must be OK), logs
//!   `pw_headers: request <method> <path>` at info and returns `Continue`.
//! - `on_http_response_headers`: adds response header
//!   `x-pw-config: <configuration>` (`default` if empty), sets (replaces)
//!   `server: pw_headers`, reads `:status` and adds `x-pw-status: <status>`
//!   (`-` if absent), returns `Continue`.
//! - `on_log`: logs `pw_headers: done <status>` at info, where status is the
//!   response's `:status`, or `-` if there is none.
//!
//! The log level is `Info` (`proxy_wasm::set_log_level` in `main!`), so
//! every line above reaches `env.proxy_log` with level 2 (Info).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(PwHeadersRoot {
            config: String::from("default"),
        })
    });
}}

/// The plugin's root context: holds the configuration.
struct PwHeadersRoot {
    config: String,
}

impl Context for PwHeadersRoot {}

impl RootContext for PwHeadersRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match String::from_utf8(bytes) {
            Ok(config) => config,
            Err(_) => {
                log::error!("pw_headers: the configuration is not UTF-8");
                return false;
            }
        };
        if config == "refuse" {
            log::warn!("pw_headers: refusing the configuration `refuse`");
            return false;
        }
        self.config = if config.is_empty() {
            String::from("default")
        } else {
            config
        };
        log::info!("pw_headers: configured {}", self.config);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PwHeaders {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request's context.
struct PwHeaders {
    config: String,
}

impl Context for PwHeaders {}

impl HttpContext for PwHeaders {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let method = self.get_http_request_header(":method").unwrap_or_default();
        if path.starts_with("/deny") {
            self.send_http_response(
                403,
                vec![("x-pw-denied", "1")],
                Some(b"denied by pw_headers\n"),
            );
            return Action::Pause;
        }
        self.add_http_request_header("x-pw-path", &path);
        self.set_http_request_header("x-pw-method", Some(&method));
        self.remove_http_request_header("x-remove-me");
        self.remove_http_request_header("x-never-there");
        log::info!("pw_headers: request {method} {path}");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-pw-config", &self.config);
        self.set_http_response_header("server", Some("pw_headers"));
        let status = self
            .get_http_response_header(":status")
            .unwrap_or_else(|| String::from("-"));
        self.add_http_response_header("x-pw-status", &status);
        Action::Continue
    }

    fn on_log(&mut self) {
        let status = self
            .get_http_response_header(":status")
            .unwrap_or_else(|| String::from("-"));
        log::info!("pw_headers: done {status}");
    }
}
