//! Logging into the proxy's log through the host import `hook.log`.
//!
//! Use the macros [`error!`](crate::error!), [`warn!`](crate::warn!),
//! [`info!`](crate::info!) and [`debug!`](crate::debug!); the proxy prefixes
//! each line with the module's name.

pub use crate::sys::Level;

/// Writes one line to the proxy's log at `level`.
pub fn write(level: Level, message: &str) {
    crate::sys::log(level, message);
}

/// Logs at [`Level::Error`] with `format!` arguments.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, &format!($($arg)*)) };
}

/// Logs at [`Level::Warn`] with `format!` arguments.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, &format!($($arg)*)) };
}

/// Logs at [`Level::Info`] with `format!` arguments.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, &format!($($arg)*)) };
}

/// Logs at [`Level::Debug`] with `format!` arguments.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, &format!($($arg)*)) };
}
