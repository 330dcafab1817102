//! Leveled logging into the gateway's log, attributed by the host to the route
//! and the filter. Cheap when the level is off: check [`enabled`] before building
//! an expensive message.

use crate::__private::bindings::wasmgate::filter::log as host;
use crate::__private::bindings::wasmgate::filter::types::LogLevel;

/// Log levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very fine-grained tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the filter handled.
    Warn,
    /// A failure.
    Error,
}

impl From<Level> for LogLevel {
    fn from(l: Level) -> Self {
        match l {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        }
    }
}

/// Writes one entry at `level`.
pub fn log(level: Level, message: &str) {
    host::log(level.into(), message);
}

/// Whether an entry at `level` would be written.
pub fn enabled(level: Level) -> bool {
    host::enabled(level.into())
}

/// Writes at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}
/// Writes at info level.
pub fn info(message: &str) {
    log(Level::Info, message)
}
/// Writes at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}
/// Writes at error level.
pub fn error(message: &str) {
    log(Level::Error, message)
}
