//! Errors a hook returns, mirroring `pingora::Error` closely enough that
//! `Error::explain(HTTPStatus(403), "...")` ports unchanged.

use std::fmt;

use crate::wire::HookError;

/// What kind of failure; decides the status the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// Answer the client with this HTTP status.
    HTTPStatus(u16),
    /// The guest's own fault: the client gets 500.
    InternalError,
}

pub use ErrorType::*;

/// A hook's failure: a type (which decides the status) and a context message.
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

    /// `Err(Error::explain(etype, context))`, for `return Error::e_explain(..)`.
    pub fn e_explain<T>(etype: ErrorType, context: impl Into<String>) -> Result<T> {
        Err(Self::explain(etype, context))
    }

    /// The HTTP status the client receives for this error.
    pub fn status(&self) -> u16 {
        match self.etype {
            HTTPStatus(code) => code,
            InternalError => 500,
        }
    }

    pub(crate) fn to_wire(&self) -> HookError {
        HookError {
            status: self.status(),
            message: self.context.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.context {
            Some(context) => write!(f, "{:?}: {context}", self.etype),
            None => write!(f, "{:?}", self.etype),
        }
    }
}

impl std::error::Error for Error {}
