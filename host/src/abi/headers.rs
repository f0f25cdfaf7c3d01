//! What both guest ABIs change in Pingora's request and response headers.

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// A header that operations can change: Pingora's request and response
/// headers.
pub trait HeaderTarget {
    /// Replaces every field called `name` with one `name: value`.
    fn insert(&mut self, name: String, value: HeaderValue) -> pingora::Result<()>;
    /// Adds `name: value`.
    fn append(&mut self, name: String, value: HeaderValue) -> pingora::Result<()>;
    /// Removes every field called `name`.
    fn remove(&mut self, name: &HeaderName);
    /// Its fields.
    fn fields(&self) -> &http::HeaderMap;

    /// Removes every field.
    fn clear_fields(&mut self) {
        let names: Vec<HeaderName> = self.fields().keys().cloned().collect();
        for name in names {
            self.remove(&name);
        }
    }
}

/// Pingora's request and response headers have the same three methods.
macro_rules! header_target {
    ($($header:ty),*) => {$(
        impl HeaderTarget for $header {
            fn insert(&mut self, name: String, value: HeaderValue) -> pingora::Result<()> {
                self.insert_header(name, value)
            }
            fn append(&mut self, name: String, value: HeaderValue) -> pingora::Result<()> {
                self.append_header(name, value).map(drop)
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn fields(&self) -> &http::HeaderMap {
                &self.headers
            }
        }
    )*};
}

header_target!(RequestHeader, ResponseHeader);
