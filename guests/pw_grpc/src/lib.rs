//! Test filter: trailers and gRPC streams, with the `proxy-wasm` crate.
//!
//! - `on_http_response_trailers`: adds trailer `x-pw-grpc-status: <the
//!   grpc-status trailer, or ->`, removes trailer `x-echo-drop`, and adds
//!   `x-pw-trailers: <how many trailers it was given>`. With the plugin
//!   configuration `trailers-trap` it then panics (a trap): none of those
//!   edits may reach the client.
//! - With the plugin configuration `chat`, `on_http_request_headers`
//!   opens a gRPC stream to cluster `echo`, method `test.Echo/Chat`,
//!   sends `one` and pauses the request. Each message received is kept;
//!   after the first (`echo:one`) it sends `two` and ends its side. When
//!   the stream closes it adds request header `x-pw-stream: <messages,
//!   comma-separated>;status=<code>;trailer=<x-trailer of the trailing
//!   metadata>;content-type=<content-type of the initial metadata>` and
//!   resumes the request.
//! - With `chat-cancel`, it opens the same stream and sends `one`; on the
//!   first message it cancels the stream, adds `x-pw-stream: cancelled
//!   after <the message>` and resumes the request (no callback may come
//!   for a cancelled stream: its close would overwrite the header).
//! - With `open-cancel`, it opens the stream and cancels it in the same
//!   callback, adds `x-pw-stream: cancelled` and goes on.
//! - With `chat-nowhere`, the stream goes to cluster `nowhere`; a refusal
//!   adds `x-pw-stream: refused <status>` and goes on.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: String::new() })
    });
}}

struct Root {
    config: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        self.config = String::from_utf8(bytes).unwrap_or_default();
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            config: self.config.clone(),
            messages: Vec::new(),
            content_type: String::from("-"),
            trailer: String::from("-"),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: String,
    messages: Vec<String>,
    content_type: String,
    trailer: String,
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let cluster = match self.config.as_str() {
            "chat" | "chat-cancel" | "open-cancel" => "echo",
            "chat-nowhere" => "nowhere",
            _ => return Action::Continue,
        };
        let token = match self.open_grpc_stream(cluster, "test.Echo", "Chat", vec![]) {
            Ok(token) => token,
            Err(status) => {
                let refused = format!("refused {status:?}");
                self.set_http_request_header("x-pw-stream", Some(&refused));
                return Action::Continue;
            }
        };
        if self.config == "open-cancel" {
            self.cancel_grpc_stream(token);
            self.set_http_request_header("x-pw-stream", Some("cancelled"));
            return Action::Continue;
        }
        self.send_grpc_stream_message(token, Some(b"one"), false);
        Action::Pause
    }

    fn on_http_response_trailers(&mut self, count: usize) -> Action {
        let status = self
            .get_http_response_trailer("grpc-status")
            .unwrap_or_else(|| "-".into());
        self.add_http_response_trailer("x-pw-grpc-status", &status);
        self.set_http_response_trailer("x-echo-drop", None);
        self.add_http_response_trailer("x-pw-trailers", &count.to_string());
        if self.config == "trailers-trap" {
            panic!("pw_grpc: a trap in on_http_response_trailers");
        }
        Action::Continue
    }
}

impl Context for Filter {
    fn on_grpc_stream_initial_metadata(&mut self, _: u32, _: u32) {
        if let Some(value) = self.get_grpc_stream_initial_metadata_value("content-type") {
            self.content_type = String::from_utf8_lossy(&value).into_owned();
        }
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let message = self.get_grpc_stream_message(0, size).unwrap_or_default();
        self.messages
            .push(String::from_utf8_lossy(&message).into_owned());
        if self.config == "chat-cancel" {
            self.cancel_grpc_stream(token);
            let header = format!("cancelled after {}", self.messages[0]);
            self.set_http_request_header("x-pw-stream", Some(&header));
            self.resume_http_request();
            return;
        }
        if self.messages.len() == 1 {
            self.send_grpc_stream_message(token, Some(b"two"), true);
        }
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _: u32, _: u32) {
        if let Some(value) = self.get_grpc_stream_trailing_metadata_value("x-trailer") {
            self.trailer = String::from_utf8_lossy(&value).into_owned();
        }
    }

    fn on_grpc_stream_close(&mut self, _: u32, status: u32) {
        let summary = format!(
            "{};status={status};trailer={};content-type={}",
            self.messages.join(","),
            self.trailer,
            self.content_type
        );
        self.set_http_request_header("x-pw-stream", Some(&summary));
        self.resume_http_request();
    }
}
