//! The gateway-wide overload guard: a sampler checks resident memory and
//! open file descriptors every `check_interval`; while either is past its
//! limit, new requests are shed with `503 overloaded` (and `Retry-After`)
//! before they allocate anything or open an upstream connection, and the
//! listener pauses accepting while descriptors are short. Requests already
//! in flight finish.
//!
//! Limits: `max_memory` (default: 90 % of the cgroup's `memory.max`, if the
//! process runs under one; otherwise no memory limit) and
//! `max_open_files_percent` of the soft `RLIMIT_NOFILE` (default 90 %).
//! Everything is read from `/proc` and `/sys/fs/cgroup` (Linux); where they
//! are missing, that guard is off.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use wasmgate_config::overload::OverloadConfig;

use prometheus_client::metrics::gauge::Gauge;

use wasmgate_metrics::Metrics;

/// Why requests are being shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// Nothing: requests are served.
    None = 0,
    /// Resident memory is past its limit.
    Memory = 1,
    /// Open file descriptors are past their limit.
    Files = 2,
}

impl Pressure {
    /// Label for metrics and the error message.
    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::None => "none",
            Pressure::Memory => "memory",
            Pressure::Files => "open_files",
        }
    }
}

/// The guard's current verdict, read on every request.
#[derive(Debug)]
pub struct OverloadGuard {
    state: AtomicU8,
    memory_limit: Option<u64>,
    files_limit: Option<u64>,
    interval: Duration,
    rss: Gauge,
    files: Gauge,
}

impl OverloadGuard {
    /// A guard with limits resolved from `config` and the system.
    pub fn new(config: &OverloadConfig, metrics: &Metrics) -> OverloadGuard {
        let memory_limit = config
            .max_memory
            .or_else(|| cgroup_memory_max().map(|max| max / 10 * 9));
        let files_limit = (config.max_open_files_percent > 0)
            .then(|| {
                std::fs::read_to_string("/proc/self/limits")
                    .ok()
                    .and_then(|s| soft_open_files(&s))
            })
            .flatten()
            .map(|soft| soft * u64::from(config.max_open_files_percent) / 100);
        OverloadGuard {
            state: AtomicU8::new(Pressure::None as u8),
            memory_limit,
            files_limit,
            interval: config.check_interval,
            rss: metrics.process_resident_memory.clone(),
            files: metrics.process_open_files.clone(),
        }
    }

    /// The current pressure.
    pub fn pressure(&self) -> Pressure {
        match self.state.load(Ordering::Relaxed) {
            1 => Pressure::Memory,
            2 => Pressure::Files,
            _ => Pressure::None,
        }
    }

    /// Samples usage once and updates the verdict.
    pub fn sample(&self) -> Pressure {
        let rss = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| resident_bytes(&s));
        let files = match std::fs::read_dir("/proc/self/fd") {
            Ok(d) => Some(d.count() as u64),
            // EMFILE/ENFILE: out of descriptors is the strongest evidence.
            Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) => Some(u64::MAX),
            Err(_) => None,
        };
        if let Some(r) = rss {
            self.rss.set(r as i64);
        }
        if let Some(f) = files {
            self.files.set(f as i64);
        }
        let mut p = judge(rss, self.memory_limit, files, self.files_limit);
        let before = self.state.load(Ordering::Relaxed);
        // Hysteresis: memory pressure clears only below 95 % of the limit,
        // so the guard does not flap around the line.
        if p == Pressure::None
            && before == Pressure::Memory as u8
            && let (Some(r), Some(l)) = (rss, self.memory_limit)
            && r >= l / 20 * 19
        {
            p = Pressure::Memory;
        }
        self.state.store(p as u8, Ordering::Relaxed);
        if before != p as u8 {
            match p {
                Pressure::None => tracing::warn!("overload cleared: serving requests again"),
                _ => tracing::error!(
                    pressure = p.as_str(),
                    resident_bytes = rss,
                    open_files = files,
                    memory_limit = self.memory_limit,
                    files_limit = self.files_limit,
                    "overloaded: shedding new requests with 503"
                ),
            }
        }
        p
    }

    /// Samples every `check_interval` until the guard is dropped elsewhere.
    pub fn spawn(self: &Arc<Self>) {
        if self.memory_limit.is_none() && self.files_limit.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        let interval = self.interval;
        tokio::spawn(async move {
            loop {
                let Some(guard) = weak.upgrade() else { return };
                guard.sample();
                drop(guard);
                tokio::time::sleep(interval).await;
            }
        });
    }
}

fn judge(
    rss: Option<u64>,
    mem_limit: Option<u64>,
    files: Option<u64>,
    files_limit: Option<u64>,
) -> Pressure {
    if let (Some(f), Some(l)) = (files, files_limit)
        && f >= l
    {
        return Pressure::Files;
    }
    if let (Some(r), Some(l)) = (rss, mem_limit)
        && r >= l
    {
        return Pressure::Memory;
    }
    Pressure::None
}

/// The memory limit of this process's cgroup (v2), from its own folder
/// (`/proc/self/cgroup`) or, in a container, the namespace's root.
fn cgroup_memory_max() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(|p| format!("/sys/fs/cgroup{}/memory.max", p.trim_end_matches('/')))
        });
    [own, Some("/sys/fs/cgroup/memory.max".to_owned())]
        .into_iter()
        .flatten()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
}

/// `VmRSS:  1234 kB` from `/proc/self/status`, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The soft limit of `Max open files` from `/proc/self/limits`.
fn soft_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_formats() {
        assert_eq!(
            resident_bytes("Name:\tx\nVmRSS:\t    1960 kB\n"),
            Some(1960 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            20000                40000                files     \n";
        assert_eq!(soft_open_files(limits), Some(20000));
        assert_eq!(
            soft_open_files("Max open files  unlimited unlimited files"),
            None
        );
    }

    #[test]
    fn files_take_precedence_and_missing_data_never_sheds() {
        assert_eq!(
            judge(Some(10), Some(5), Some(95), Some(90)),
            Pressure::Files
        );
        assert_eq!(
            judge(Some(10), Some(5), Some(10), Some(90)),
            Pressure::Memory
        );
        assert_eq!(judge(Some(4), Some(5), Some(10), Some(90)), Pressure::None);
        assert_eq!(judge(None, Some(5), None, Some(90)), Pressure::None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let m = Metrics::new();
        let g = OverloadGuard::new(
            &OverloadConfig {
                max_memory: Some(1),
                ..Default::default()
            },
            &m,
        );
        assert_eq!(
            g.sample(),
            Pressure::Memory,
            "any process is above one byte"
        );
        assert!(m.process_resident_memory.get() > 0);
        assert!(m.process_open_files.get() > 0);
    }
}
