//! Test filter: reads properties back. Plugin configuration: property
//! paths separated by commas, each dotted (`request.path`) and optionally
//! typed by a suffix: `:int` (an 8-byte little-endian integer, reported in
//! decimal), `:bool` (one byte, reported `true`/`false`), `:map` (a
//! serialised header map, reported as the value of its `x-probe` entry);
//! untyped values are reported as UTF-8 text.
//!
//! In `on_http_response_headers` it reads every path and adds a response
//! header `x-prop-<path with dots as dashes>: <value>`, or `<absent>` if the
//! host has no such property.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(PropsRoot { paths: Vec::new() })
    });
}}

/// The root context: the configured paths.
struct PropsRoot {
    paths: Vec<String>,
}

impl Context for PropsRoot {}

impl RootContext for PropsRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.paths = String::from_utf8_lossy(&config)
            .split(',')
            .map(|path| path.trim().to_string())
            .filter(|path| !path.is_empty())
            .collect();
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Props {
            paths: self.paths.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request's context.
struct Props {
    paths: Vec<String>,
}

impl Context for Props {}

impl HttpContext for Props {
    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for typed in &self.paths {
            let (path, kind) = typed.split_once(':').unwrap_or((typed, "text"));
            let value = match self.get_property(path.split('.').collect()) {
                None => "<absent>".to_string(),
                Some(bytes) => report(&bytes, kind),
            };
            let name = format!("x-prop-{}", path.replace('.', "-"));
            self.add_http_response_header(&name, &value);
        }
        Action::Continue
    }
}

/// `bytes` as a header value, read as `kind`.
fn report(bytes: &[u8], kind: &str) -> String {
    match kind {
        "int" => match <[u8; 8]>::try_from(bytes) {
            Ok(raw) => i64::from_le_bytes(raw).to_string(),
            Err(_) => format!("<{} bytes>", bytes.len()),
        },
        "bool" => match bytes {
            [0] => "false".to_string(),
            [1] => "true".to_string(),
            _ => format!("<{} bytes>", bytes.len()),
        },
        "map" => map_entry(bytes, "x-probe").unwrap_or_else(|| "<no x-probe>".to_string()),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The value of `key` in a serialised header map.
fn map_entry(bytes: &[u8], key: &str) -> Option<String> {
    let word = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let count = word(0)?;
    let mut at = 4 + count * 8;
    for i in 0..count {
        let (name_len, value_len) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let name = bytes.get(at..at + name_len)?;
        at += name_len + 1;
        let value = bytes.get(at..at + value_len)?;
        at += value_len + 1;
        if name == key.as_bytes() {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    None
}
