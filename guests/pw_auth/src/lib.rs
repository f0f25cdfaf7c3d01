//! Test filter: an auth check by HTTP callout. Plugin configuration: the
//! cluster to ask (default `auth`), optionally followed by ` on_response`,
//! then optionally by ` endless`.
//!
//! - `on_http_request_headers` dispatches `GET /check?user=<x-user>` to
//!   the cluster (timeout 300 ms) and pauses the request.
//! - `on_http_call_response`: a failed or timed-out call (no headers)
//!   answers 503 `auth unavailable`; `:status` 200 with a body starting
//!   `allow` adds `x-auth: <the body>` to the request and resumes it;
//!   anything else answers 403 `denied`.
//!
//! With ` on_response` the request goes on, and `on_http_response_headers`
//! makes the same call and pauses the response; its answer becomes the
//! response header `x-auth` (`unavailable` for a failed call), and the
//! response resumes.
//!
//! With ` endless` every answer dispatches the same call again, and the
//! filter never resumes by itself: a chain the host must end.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(AuthRoot { cluster: "auth".into(), on_response: false, endless: false })
    });
}}

struct AuthRoot {
    cluster: String,
    on_response: bool,
    endless: bool,
}

impl Context for AuthRoot {}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self
            .get_plugin_configuration()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default();
        let (config, endless) = match config.strip_suffix(" endless") {
            Some(rest) => (rest.to_string(), true),
            None => (config, false),
        };
        self.endless = endless;
        let (cluster, on_response) = match config.strip_suffix(" on_response") {
            Some(cluster) => (cluster.to_string(), true),
            None => (config, false),
        };
        if !cluster.is_empty() {
            self.cluster = cluster;
        }
        self.on_response = on_response;
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Auth {
            cluster: self.cluster.clone(),
            on_response: self.on_response,
            endless: self.endless,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Auth {
    cluster: String,
    on_response: bool,
    endless: bool,
}

impl Auth {
    /// Asks the cluster about the request's user.
    fn check(&self) -> Result<u32, proxy_wasm::types::Status> {
        let user = self.get_http_request_header("x-user").unwrap_or_default();
        let path = format!("/check?user={user}");
        self.dispatch_http_call(
            &self.cluster,
            vec![(":method", "GET"), (":path", &path), (":authority", "auth")],
            None,
            vec![],
            Duration::from_millis(300),
        )
    }
}

impl HttpContext for Auth {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.on_response {
            return Action::Continue;
        }
        match self.check() {
            Ok(_token) => Action::Pause,
            Err(status) => {
                log::error!("pw_auth: dispatch failed: {status:?}");
                Action::Continue
            }
        }
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.on_response {
            return Action::Continue;
        }
        let user = self.get_http_request_header("x-user").unwrap_or_default();
        let path = format!("/check?user={user}");
        let dispatched = self.dispatch_http_call(
            &self.cluster,
            vec![(":method", "GET"), (":path", &path), (":authority", "auth")],
            None,
            vec![],
            Duration::from_millis(300),
        );
        match dispatched {
            Ok(_token) => Action::Pause,
            Err(status) => {
                log::error!("pw_auth: dispatch failed: {status:?}");
                self.send_http_response(500, vec![], Some(b"auth call not made\n"));
                Action::Pause
            }
        }
    }
}

impl Context for Auth {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        if self.endless {
            if let Err(status) = self.check() {
                log::error!("pw_auth: dispatch failed: {status:?}");
            }
            return;
        }
        if num_headers == 0 && self.on_response {
            self.set_http_response_header("x-auth", Some("unavailable"));
            self.resume_http_response();
            return;
        }
        if num_headers == 0 {
            self.send_http_response(503, vec![], Some(b"auth unavailable\n"));
            return;
        }
        let status = self.get_http_call_response_header(":status");
        let body = self
            .get_http_call_response_body(0, body_size)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default();
        if self.on_response {
            let answer = format!("{} {}", status.unwrap_or_default(), body.trim());
            self.set_http_response_header("x-auth", Some(&answer));
            self.resume_http_response();
            return;
        }
        if status.as_deref() == Some("200") && body.starts_with("allow") {
            self.set_http_request_header("x-auth", Some(body.trim()));
            self.resume_http_request();
        } else {
            self.send_http_response(403, vec![], Some(b"denied\n"));
        }
    }
}
