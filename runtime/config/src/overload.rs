//! `[overload]`: when the gateway sheds load.

use std::time::Duration;

/// `[overload]` as validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadConfig {
    /// Resident memory (bytes) past which requests are shed; `None`: derive
    /// from the cgroup limit, or no limit.
    pub max_memory: Option<u64>,
    /// Percent of the soft open-files limit past which requests are shed
    /// (0: off).
    pub max_open_files_percent: u8,
    /// How often usage is sampled.
    pub check_interval: Duration,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        OverloadConfig {
            max_memory: None,
            max_open_files_percent: 90,
            check_interval: Duration::from_millis(250),
        }
    }
}
