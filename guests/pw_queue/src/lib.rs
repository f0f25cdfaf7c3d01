//! Test filter: shared queues. Plugin configuration, one of:
//!
//! - `consumer:<queue>`: `on_configure` registers `<queue>` (of the
//!   filter's `vm_id`); `on_queue_ready` dequeues every item waiting and
//!   keeps the last in shared data `queue-last` and their count in
//!   `queue-count`; `on_http_response_headers` adds `x-queue-last` and
//!   `x-queue-count` from them (`-` if unset).
//! - `producer:<vm_id>:<queue>`: `on_http_request_headers` resolves the
//!   queue and enqueues the request's `:path` on it, adding the request
//!   header `x-queue: enqueued`, or `x-queue: not-found` if no such queue
//!   is registered.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(QueueRoot { role: Role::None })
    });
}}

/// What the filter does, from its configuration.
#[derive(Clone)]
enum Role {
    None,
    Consumer { queue: u32 },
    Producer { vm_id: String, queue: String },
}

/// The root context: the role, and for a consumer its queue.
struct QueueRoot {
    role: Role,
}

impl Context for QueueRoot {}

impl RootContext for QueueRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config).into_owned();
        self.role = match config.split(':').collect::<Vec<_>>()[..] {
            ["consumer", queue] => Role::Consumer {
                queue: self.register_shared_queue(queue),
            },
            ["producer", vm_id, queue] => Role::Producer {
                vm_id: vm_id.to_string(),
                queue: queue.to_string(),
            },
            _ => return false,
        };
        true
    }

    fn on_queue_ready(&mut self, queue: u32) {
        let Role::Consumer { queue: ours } = self.role else {
            return;
        };
        if queue != ours {
            return;
        }
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue) {
            let _ = self.set_shared_data("queue-last", Some(&item), None);
            let count = match self.get_shared_data("queue-count") {
                (Some(bytes), _) => String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0),
                _ => 0,
            };
            let next = (count + 1).to_string();
            let _ = self.set_shared_data("queue-count", Some(next.as_bytes()), None);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(QueueStream {
            role: self.role.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request's context.
struct QueueStream {
    role: Role,
}

impl Context for QueueStream {}

impl HttpContext for QueueStream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Role::Producer { vm_id, queue } = &self.role {
            let path = self.get_http_request_header(":path").unwrap_or_default();
            let outcome = match self.resolve_shared_queue(vm_id, queue) {
                Some(token) => match self.enqueue_shared_queue(token, Some(path.as_bytes())) {
                    Ok(()) => "enqueued",
                    Err(_) => "refused",
                },
                None => "not-found",
            };
            self.add_http_request_header("x-queue", outcome);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Role::Consumer { .. } = self.role {
            for (key, header) in [
                ("queue-last", "x-queue-last"),
                ("queue-count", "x-queue-count"),
            ] {
                let value = match self.get_shared_data(key) {
                    (Some(bytes), _) => String::from_utf8_lossy(&bytes).into_owned(),
                    _ => "-".to_string(),
                };
                self.add_http_response_header(header, &value);
            }
        }
        Action::Continue
    }
}
