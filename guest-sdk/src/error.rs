//! Errors a hook returns, and the one `logging` is told about, mirroring
//! `pingora::Error` closely enough that `Error::explain(HTTPStatus(403),
//! "...")` and `e.etype()` port unchanged.

use std::cell::RefCell;
use std::fmt;

use crate::wire::{HookError, LoggedError};

/// What kind of failure (Pingora's `ErrorType`, the same variants). A hook
/// returns [`HTTPStatus`] to answer with a status,
/// or anything else for 500; `logging` sees the type of the host's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// Connecting to the upstream timed out.
    ConnectTimedout,
    /// The upstream refused the connection.
    ConnectRefused,
    /// No route to the upstream.
    ConnectNoRoute,
    /// TLS wants an X.509 lookup.
    TLSWantX509Lookup,
    /// The TLS handshake failed.
    TLSHandshakeFailure,
    /// The TLS handshake timed out.
    TLSHandshakeTimedout,
    /// The upstream's certificate is invalid.
    InvalidCert,
    /// Another handshake failure.
    HandshakeError,
    /// Another connection failure.
    ConnectError,
    /// Binding a socket failed.
    BindError,
    /// Accepting a connection failed.
    AcceptError,
    /// A socket operation failed.
    SocketError,
    /// Connecting through a proxy failed.
    ConnectProxyFailure,
    /// An invalid HTTP header.
    InvalidHTTPHeader,
    /// Another HTTP/1 failure.
    H1Error,
    /// Another HTTP/2 failure.
    H2Error,
    /// The peer asked to downgrade from HTTP/2.
    H2Downgrade,
    /// The peer sent invalid HTTP/2 frames.
    InvalidH2,
    /// Reading from a connection failed.
    ReadError,
    /// Writing to a connection failed.
    WriteError,
    /// Reading from a connection timed out.
    ReadTimedout,
    /// Writing to a connection timed out.
    WriteTimedout,
    /// The connection was closed.
    ConnectionClosed,
    /// Answer the client with this HTTP status.
    HTTPStatus(u16),
    /// Opening a file failed.
    FileOpenError,
    /// Creating a file failed.
    FileCreateError,
    /// Reading a file failed.
    FileReadError,
    /// Writing a file failed.
    FileWriteError,
    /// An internal failure, the guest's own for example: the client gets
    /// 500.
    InternalError,
    /// A failure of unknown kind.
    UnknownError,
    /// A type of the user's (or one the host named that is not above).
    Custom(&'static str),
    /// A type of the user's, with a code.
    CustomCode(&'static str, u16),
}

pub use ErrorType::*;

/// The variants without data, found by their [`ErrorType::as_str`] names.
const NAMED: [ErrorType; 29] = [
    ConnectTimedout,
    ConnectRefused,
    ConnectNoRoute,
    TLSWantX509Lookup,
    TLSHandshakeFailure,
    TLSHandshakeTimedout,
    InvalidCert,
    HandshakeError,
    ConnectError,
    BindError,
    AcceptError,
    SocketError,
    ConnectProxyFailure,
    InvalidHTTPHeader,
    H1Error,
    H2Error,
    H2Downgrade,
    InvalidH2,
    ReadError,
    WriteError,
    ReadTimedout,
    WriteTimedout,
    ConnectionClosed,
    FileOpenError,
    FileCreateError,
    FileReadError,
    FileWriteError,
    InternalError,
    UnknownError,
];

/// How many distinct unknown type names [`ErrorType::from_name`] keeps
/// (each is leaked once to become `&'static`); later ones become
/// [`UnknownError`].
const MAX_CUSTOM_NAMES: usize = 32;

thread_local! {
    static CUSTOM_NAMES: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

impl ErrorType {
    /// A type of the user's, named `name` (Pingora's `ErrorType::new`).
    pub const fn new(name: &'static str) -> Self {
        Custom(name)
    }

    /// A type of the user's with a code (Pingora's `ErrorType::new_code`).
    pub const fn new_code(name: &'static str, code: u16) -> Self {
        CustomCode(name, code)
    }

    /// The type's name, e.g. `ConnectRefused`, `HTTPStatus`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnectTimedout => "ConnectTimedout",
            ConnectRefused => "ConnectRefused",
            ConnectNoRoute => "ConnectNoRoute",
            TLSWantX509Lookup => "TLSWantX509Lookup",
            TLSHandshakeFailure => "TLSHandshakeFailure",
            TLSHandshakeTimedout => "TLSHandshakeTimedout",
            InvalidCert => "InvalidCert",
            HandshakeError => "HandshakeError",
            ConnectError => "ConnectError",
            BindError => "BindError",
            AcceptError => "AcceptError",
            SocketError => "SocketError",
            ConnectProxyFailure => "ConnectProxyFailure",
            InvalidHTTPHeader => "InvalidHTTPHeader",
            H1Error => "H1Error",
            H2Error => "H2Error",
            H2Downgrade => "H2Downgrade",
            InvalidH2 => "InvalidH2",
            ReadError => "ReadError",
            WriteError => "WriteError",
            ReadTimedout => "ReadTimedout",
            WriteTimedout => "WriteTimedout",
            ConnectionClosed => "ConnectionClosed",
            HTTPStatus(_) => "HTTPStatus",
            FileOpenError => "FileOpenError",
            FileCreateError => "FileCreateError",
            FileReadError => "FileReadError",
            FileWriteError => "FileWriteError",
            InternalError => "InternalError",
            UnknownError => "UnknownError",
            Custom(name) | CustomCode(name, _) => name,
        }
    }

    /// The type named `name` (an [`as_str`](Self::as_str) name, as the
    /// host sends it to `logging`); `HTTPStatus` gets `status`, which the
    /// name does not carry. A name not in the list becomes
    /// [`Custom`] with that name, so `as_str` gives it
    /// back.
    pub(crate) fn from_name(name: &str, status: u16) -> Self {
        if name == "HTTPStatus" {
            return HTTPStatus(status);
        }
        if let Some(known) = NAMED.iter().find(|t| t.as_str() == name) {
            return *known;
        }
        CUSTOM_NAMES.with_borrow_mut(|names| {
            if let Some(&kept) = names.iter().find(|&&kept| kept == name) {
                return Custom(kept);
            }
            if names.len() >= MAX_CUSTOM_NAMES {
                return UnknownError;
            }
            let kept: &'static str = Box::leak(name.to_string().into_boxed_str());
            names.push(kept);
            Custom(kept)
        })
    }
}

/// A failure: a type (which decides the status) and a context message
/// (Pingora's `Error`, without its source and cause).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The kind of failure.
    pub etype: ErrorType,
    /// Why, for the proxy's log.
    pub context: Option<String>,
}

/// A boxed [`Error`], as hooks return it (Pingora's `BError`).
pub type BError = Box<Error>;

/// The result type of every hook (Pingora's `Result`).
pub type Result<T, E = BError> = std::result::Result<T, E>;

impl Error {
    /// An error of type `etype` without context.
    pub fn new(etype: ErrorType) -> BError {
        Box::new(Error {
            etype,
            context: None,
        })
    }

    /// An error of type `etype` explained by `context`.
    pub fn explain(etype: ErrorType, context: impl Into<String>) -> BError {
        Box::new(Error {
            etype,
            context: Some(context.into()),
        })
    }

    /// `Err(Error::new(etype))`.
    pub fn err<T>(etype: ErrorType) -> Result<T> {
        Err(Self::new(etype))
    }

    /// `Err(Error::explain(etype, context))`, for `return Error::e_explain(..)`.
    pub fn e_explain<T>(etype: ErrorType, context: impl Into<String>) -> Result<T> {
        Err(Self::explain(etype, context))
    }

    /// The error's type.
    pub fn etype(&self) -> &ErrorType {
        &self.etype
    }

    /// The name of the error's type ([`ErrorType::as_str`]).
    pub fn reason_str(&self) -> &str {
        self.etype.as_str()
    }

    /// Replaces the context.
    pub fn set_context(&mut self, context: impl Into<String>) {
        self.context = Some(context.into());
    }

    /// The HTTP status the client receives when a hook returns this error:
    /// an [`HTTPStatus`]'s own, else 500.
    pub fn status(&self) -> u16 {
        match self.etype {
            HTTPStatus(code) => code,
            _ => 500,
        }
    }

    pub(crate) fn to_wire(&self) -> HookError {
        HookError {
            status: self.status(),
            message: self.context.clone().unwrap_or_default(),
        }
    }

    /// The error `logging` is told about: its type from the host's `kind`
    /// (for `HTTPStatus`, whose code the kind does not carry, the status
    /// the client got, `status`), the host's text as context.
    pub(crate) fn from_logged(logged: LoggedError, status: u16) -> Self {
        Error {
            etype: ErrorType::from_name(&logged.kind, status),
            context: (!logged.text.is_empty()).then_some(logged.text),
        }
    }
}

impl fmt::Display for Error {
    /// As Pingora writes it (without the source): `ConnectRefused context:
    /// ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.etype.as_str())?;
        if let HTTPStatus(code) = self.etype {
            write!(f, "({code})")?;
        }
        if let Some(context) = &self.context {
            write!(f, " context: {context}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_maps_back_to_its_type() {
        for etype in NAMED {
            assert_eq!(ErrorType::from_name(etype.as_str(), 0), etype);
        }
        assert_eq!(ErrorType::from_name("HTTPStatus", 404), HTTPStatus(404));
        let custom = ErrorType::from_name("NewKind", 0);
        assert_eq!(custom, Custom("NewKind"));
        assert_eq!(custom.as_str(), "NewKind");
    }

    #[test]
    fn logged_errors_keep_kind_and_text() {
        let e = Error::from_logged(
            LoggedError {
                kind: "ConnectRefused".into(),
                text: "Upstream ConnectRefused context: 127.0.0.1:1".into(),
            },
            502,
        );
        assert_eq!(e.etype(), &ConnectRefused);
        assert_eq!(
            e.to_string(),
            "ConnectRefused context: Upstream ConnectRefused context: 127.0.0.1:1"
        );
        assert_eq!(
            Error::explain(HTTPStatus(403), "no").to_string(),
            "HTTPStatus(403) context: no"
        );
    }
}
