//! Benchmark filter: reads `:path`, adds one request header
//! (`x-pw-path: <path>`) and one response header (`x-pw: 1`). Nothing
//! else; its baseline is `host/examples/native_filter.rs`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BenchRoot) });
}}

struct BenchRoot;

impl Context for BenchRoot {}

impl RootContext for BenchRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Bench))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Bench;

impl Context for Bench {}

impl HttpContext for Bench {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.add_http_request_header("x-pw-path", &path);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-pw", "1");
        Action::Continue
    }
}
