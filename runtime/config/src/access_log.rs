//! `[access_log]`: where the access log goes.

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(std::path::PathBuf),
}
