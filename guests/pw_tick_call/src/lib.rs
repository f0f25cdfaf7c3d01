//! Test filter: an HTTP call from the root context. Plugin configuration:
//! a cluster name. `on_configure` asks for a tick every 50 ms; each
//! `on_tick` dispatches `GET /from-tick` to the cluster (1 s timeout);
//! `on_http_call_response`, on the root context, keeps
//! `<:status> <body bytes>` in shared data `tick-call` (`failed` for a
//! failed call) and counts responses in `tick-calls`. Per request,
//! `on_http_response_headers` adds `x-tick-call` and `x-tick-calls` from
//! them (`-` if unset).

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(TickCallRoot { cluster: String::new() })
    });
}}

/// The root context: the cluster to call.
struct TickCallRoot {
    cluster: String,
}

impl Context for TickCallRoot {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let outcome = match self.get_http_call_response_header(":status") {
            Some(status) => format!("{status} {body_size}"),
            None => "failed".to_string(),
        };
        let _ = self.set_shared_data("tick-call", Some(outcome.as_bytes()), None);
        let count = match self.get_shared_data("tick-calls") {
            (Some(bytes), _) => String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0),
            _ => 0,
        };
        let next = (count + 1).to_string();
        let _ = self.set_shared_data("tick-calls", Some(next.as_bytes()), None);
    }
}

impl RootContext for TickCallRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.cluster = String::from_utf8_lossy(&config).into_owned();
        self.set_tick_period(Duration::from_millis(50));
        true
    }

    fn on_tick(&mut self) {
        let headers = vec![
            (":method", "GET"),
            (":path", "/from-tick"),
            (":authority", "tick.example"),
        ];
        let _ =
            self.dispatch_http_call(&self.cluster, headers, None, vec![], Duration::from_secs(1));
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TickCallStream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request's context.
struct TickCallStream;

impl Context for TickCallStream {}

impl HttpContext for TickCallStream {
    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (key, header) in [("tick-call", "x-tick-call"), ("tick-calls", "x-tick-calls")] {
            let value = match self.get_shared_data(key) {
                (Some(bytes), _) => String::from_utf8_lossy(&bytes).into_owned(),
                _ => "-".to_string(),
            };
            self.add_http_response_header(header, &value);
        }
        Action::Continue
    }
}
