//! `[engine]`: the one wasmtime engine all filters share, as written
//! (`RawEngine`), validated and typed (`EngineConfig`), and the default
//! folder of the compiled-component cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{ConfigError, HumanDuration, HumanSize};

/// Default number of filter instances that may exist at once (pooling slots).
pub const DEFAULT_MAX_INSTANCES: u32 = 256;
/// Default upper bound of any filter's memory (the pooling slot size).
pub const DEFAULT_MAX_MEMORY: u64 = 256 << 20;
/// Default interval of the epoch ticker that enforces CPU budgets; a
/// long guest call yields its worker thread at every tick.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(1);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEngine {
    compile_cache: Option<bool>,
    cache_dir: Option<String>,
    max_instances: Option<u32>,
    max_memory: Option<HumanSize>,
    epoch_tick: Option<HumanDuration>,
}

/// `[engine]`: settings of the one wasmtime engine all filters share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Filter instances that can exist at once; more concurrent calls fail fast.
    pub max_instances: u32,
    /// The largest memory any filter may be given (pooling slot size).
    pub max_memory: u64,
    /// Epoch ticker interval: the granularity of CPU budgets.
    pub epoch_tick: Duration,
    /// Folder of the compiled-component cache; `None` = no cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_instances: DEFAULT_MAX_INSTANCES,
            max_memory: DEFAULT_MAX_MEMORY,
            epoch_tick: DEFAULT_EPOCH_TICK,
            cache_dir: default_cache_dir(),
        }
    }
}

/// Set by [`set_default_cache_dir`].
static DEFAULT_CACHE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes `dir` the compile cache of every config this process reads later
/// without an `engine.cache_dir`, in place of the user's cache folder: for a
/// program that embeds the gateway, and for tests, whose results must not
/// depend on what earlier runs left in the user's cache. Only the first call
/// counts; returns whether it was this one.
pub fn set_default_cache_dir(dir: PathBuf) -> bool {
    DEFAULT_CACHE_DIR.set(dir).is_ok()
}

/// The folder set by [`set_default_cache_dir`], else
/// `$XDG_CACHE_HOME/wasmgate`, else `$HOME/.cache/wasmgate`, else none.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = DEFAULT_CACHE_DIR.get() {
        return Some(dir.clone());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("wasmgate"))
}

/// Validates `[engine]`; problems go to `errors` with their key paths. A
/// value that is out of range leaves the default in place, so the filters'
/// checks against the engine still run.
pub(crate) fn validate(raw: RawEngine, base: &Path, errors: &mut Vec<ConfigError>) -> EngineConfig {
    let mut engine = EngineConfig::default();
    match (raw.compile_cache, raw.cache_dir) {
        (Some(false), Some(_)) => errors.push(ConfigError::new(
            "engine.cache_dir",
            "is set but engine.compile_cache is false",
        )),
        (Some(false), None) => engine.cache_dir = None,
        (_, Some(dir)) => engine.cache_dir = Some(base.join(dir)),
        (_, None) => {}
    }
    if let Some(n) = raw.max_instances {
        if n == 0 || n > 100_000 {
            errors.push(ConfigError::new(
                "engine.max_instances",
                format!("must be between 1 and 100000, got {n}"),
            ));
        } else {
            engine.max_instances = n;
        }
    }
    if let Some(HumanSize(n)) = raw.max_memory {
        if !(64 << 10..=4 << 30).contains(&n) {
            errors.push(ConfigError::new(
                "engine.max_memory",
                format!("must be between 64KiB and 4GiB, got {n} bytes"),
            ));
        } else {
            engine.max_memory = n;
        }
    }
    if let Some(HumanDuration(d)) = raw.epoch_tick {
        if d < Duration::from_millis(1) || d > Duration::from_secs(1) {
            errors.push(ConfigError::new(
                "engine.epoch_tick",
                "must be between 1ms and 1s",
            ));
        } else {
            engine.epoch_tick = d;
        }
    }
    engine
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (EngineConfig, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let engine = validate(
            toml::from_str(text).unwrap(),
            Path::new("/srv"),
            &mut errors,
        );
        (engine, errors)
    }

    #[test]
    fn the_cache_is_on_by_default_and_can_be_moved_or_turned_off() {
        let (e, errors) = check("");
        assert!(errors.is_empty());
        assert_eq!(e.cache_dir, default_cache_dir());
        assert_eq!(e.max_instances, DEFAULT_MAX_INSTANCES);
        let (e, _) = check("cache_dir = \"cache\"");
        assert_eq!(e.cache_dir.as_deref(), Some(Path::new("/srv/cache")));
        let (e, _) = check("compile_cache = false");
        assert_eq!(e.cache_dir, None);
        let (_, errors) = check("compile_cache = false\ncache_dir = \"c\"");
        assert_eq!(
            errors,
            [ConfigError::new(
                "engine.cache_dir",
                "is set but engine.compile_cache is false"
            )]
        );
    }

    #[test]
    fn out_of_range_values_keep_the_default() {
        let (e, errors) = check("max_instances = 0\nmax_memory = 1024\nepoch_tick = \"2s\"");
        assert_eq!(e.max_instances, DEFAULT_MAX_INSTANCES);
        assert_eq!(e.max_memory, DEFAULT_MAX_MEMORY);
        assert_eq!(e.epoch_tick, DEFAULT_EPOCH_TICK);
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "engine.max_instances: must be between 1 and 100000, got 0",
                "engine.max_memory: must be between 64KiB and 4GiB, got 1024 bytes",
                "engine.epoch_tick: must be between 1ms and 1s",
            ]
        );
        let (e, errors) = check("max_instances = 9\nmax_memory = \"1MiB\"\nepoch_tick = \"1ms\"");
        assert!(errors.is_empty());
        assert_eq!(
            (e.max_instances, e.max_memory, e.epoch_tick),
            (9, 1 << 20, Duration::from_millis(1))
        );
    }
}
