//! Test filter: rewrites bodies to another length. Both bodies are
//! buffered (the callbacks pause until the end of the stream), then:
//!
//! - the request body becomes its upper case followed by `!!`;
//! - the response body becomes `wrapped(<its length>):` followed by it.
//!
//! As the Rust SDK's `http_body` example does, it removes `Content-Length`
//! in its headers callbacks first, so that the host frames the new bodies.
//! With the plugin configuration `keep_length` it does not: a filter that
//! gets framing wrong.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(BodyRoot { keep_length: false })
    });
}}

struct BodyRoot {
    keep_length: bool,
}

impl Context for BodyRoot {}

impl RootContext for BodyRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.keep_length = self.get_plugin_configuration().as_deref() == Some(b"keep_length");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Body {
            keep_length: self.keep_length,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Body {
    keep_length: bool,
}

impl Context for Body {}

impl HttpContext for Body {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.keep_length {
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.keep_length {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let mut new = body.to_ascii_uppercase();
        new.extend_from_slice(b"!!");
        self.set_http_request_body(0, body_size, &new);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let mut new = format!("wrapped({}):", body.len()).into_bytes();
        new.extend_from_slice(&body);
        self.set_http_response_body(0, body_size, &new);
        Action::Continue
    }
}
