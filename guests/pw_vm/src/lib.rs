//! Test filter: what filter entries sharing a VM share. Plugin
//! configuration: a name `N`.
//!
//! - Module globals count the root contexts made in this VM and the
//!   requests its HTTP contexts saw, over every plugin it runs.
//! - `on_http_request_headers` counts the request in the VM and keeps the
//!   count.
//! - `on_http_response_headers` adds `x-vm-N: <that count>` and sets
//!   `x-roots: <root contexts in the VM>`.

use std::sync::atomic::{AtomicU32, Ordering};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

/// Root contexts this VM made.
static ROOTS: AtomicU32 = AtomicU32::new(0);

/// Requests this VM's HTTP contexts saw.
static REQUESTS: AtomicU32 = AtomicU32::new(0);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        ROOTS.fetch_add(1, Ordering::Relaxed);
        Box::new(VmRoot { name: String::new() })
    });
}}

/// The root context: its plugin's name.
struct VmRoot {
    name: String,
}

impl Context for VmRoot {}

impl RootContext for VmRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.name = String::from_utf8_lossy(&config).trim().to_string();
        !self.name.is_empty()
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(VmHttp {
            name: self.name.clone(),
            seen: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct VmHttp {
    name: String,
    seen: u32,
}

impl Context for VmHttp {}

impl HttpContext for VmHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.seen = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let header = format!("x-vm-{}", self.name);
        self.add_http_response_header(&header, &self.seen.to_string());
        let roots = ROOTS.load(Ordering::Relaxed).to_string();
        self.set_http_response_header("x-roots", Some(&roots));
        Action::Continue
    }
}
