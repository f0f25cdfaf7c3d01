//! Test filter: counters three ways. Plugin configuration: the tick
//! period in milliseconds (empty: no ticks).
//!
//! - `on_configure` defines the counter metrics `pw_counter_requests` and
//!   `pw_counter_ticks` and sets the tick period.
//! - `on_tick` increments `pw_counter_ticks` and the shared-data key
//!   `ticks`.
//! - `on_http_request_headers` increments `pw_counter_requests` and the
//!   shared-data key `requests` (get, then set with CAS, retried on a
//!   mismatch: no update is lost across instances), and sends the new
//!   count upstream as `x-pw-count`.
//! - `on_http_response_headers` adds `x-pw-ticks`: the shared `ticks`.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(CounterRoot { requests: 0, ticks: 0 })
    });
}}

struct CounterRoot {
    requests: u32,
    ticks: u32,
}

impl Context for CounterRoot {}

impl RootContext for CounterRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let (Ok(requests), Ok(ticks)) = (
            hostcalls::define_metric(MetricType::Counter, "pw_counter_requests"),
            hostcalls::define_metric(MetricType::Counter, "pw_counter_ticks"),
        ) else {
            return false;
        };
        self.requests = requests;
        self.ticks = ticks;
        let period = self
            .get_plugin_configuration()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.trim().parse::<u64>().ok());
        if let Some(ms) = period {
            self.set_tick_period(Duration::from_millis(ms));
        }
        true
    }

    fn on_tick(&mut self) {
        let _ = hostcalls::increment_metric(self.ticks, 1);
        increment(self, "ticks");
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CounterHttp {
            requests: self.requests,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Adds one to the number kept at shared-data `key`; returns the new one.
fn increment(context: &dyn Context, key: &str) -> u64 {
    loop {
        let (value, cas) = context.get_shared_data(key);
        let count = value
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        match context.set_shared_data(key, Some(count.to_string().as_bytes()), cas) {
            Ok(()) => return count,
            Err(Status::CasMismatch) => continue,
            Err(status) => panic!("set_shared_data: {status:?}"),
        }
    }
}

struct CounterHttp {
    requests: u32,
}

impl Context for CounterHttp {}

impl HttpContext for CounterHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = hostcalls::increment_metric(self.requests, 1);
        let count = increment(self, "requests");
        self.set_http_request_header("x-pw-count", Some(&count.to_string()));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (ticks, _) = self.get_shared_data("ticks");
        let ticks = ticks
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_else(|| "0".into());
        self.set_http_response_header("x-pw-ticks", Some(&ticks));
        Action::Continue
    }
}
