//! The on-disk cache of compiled components, keyed by content hash, so that a
//! restart (or a second gateway on the same machine) does not recompile.
//!
//! An entry is `<dir>/<sha256 of the .wasm>-<engine compatibility hash>.cwasm`:
//! the output of `Engine::precompile_component` followed by the SHA-256 of that
//! output. The trailing digest is checked before the entry is used, so a torn
//! or corrupted file is recompiled rather than loaded. Entries are written to a
//! unique temporary name and renamed into place, so concurrent writers are
//! safe. The folder is created private to the user (0700): loading an entry
//! runs its machine code, so only this user may write there. That is checked,
//! not assumed: at open and before every load, a folder or entry owned by
//! another user, or writable by group or others, is refused (logged, counted
//! in [`CompileCache::refusals`]) and the module compiled instead: whoever
//! could write there could otherwise have the gateway run their code (the
//! trailing digest only catches accidents, since a writer can recompute it).
//!
//! The folder holds at most [`MAX_ENTRIES`] entries and [`MAX_BYTES`]: a load
//! touches its entry, and the least recently used past either cap are
//! removed (at open, and after every [`PRUNE_EVERY`] entries stored), so a
//! gateway that swaps modules for months does not fill its disk, and one
//! with a thousand tenants' modules starts again without compiling them.

use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Whether a load came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded precompiled code.
    Hit,
    /// Compiled now (and stored, if the folder is writable).
    Compiled,
    /// Compiled now; caching is off.
    Disabled,
    /// Compiled earlier in this process (the same bytes loaded again).
    Memory,
    /// Compiled now; the cache folder or entry was refused (another user
    /// owns it, or others may write it) and left alone.
    Refused,
}

/// Entries kept in the folder: a thousand tenants with a few versions of
/// their filters each.
pub const MAX_ENTRIES: usize = 4096;
/// Bytes kept in the folder (a compiled filter is typically a few hundred
/// KiB).
pub const MAX_BYTES: u64 = 4 << 30;
/// Entries stored between two prunes (a prune lists the folder).
pub const PRUNE_EVERY: u64 = 64;

/// The cache folder and the engine's compatibility key.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    compat: String,
    refusals: Arc<AtomicU64>,
    /// Entries stored since the last prune.
    stored: Arc<AtomicU64>,
}

/// Why a cache folder or entry is not trusted, if it is not: it must belong
/// to this process's user and be writable by no one else.
#[cfg(unix)]
fn untrusted(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Some(format!("owned by uid {}, not this user ({me})", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "writable by {} (mode {:o})",
            if meta.mode() & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        ));
    }
    None
}

#[cfg(not(unix))]
fn untrusted(_meta: &std::fs::Metadata) -> Option<String> {
    None
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl CompileCache {
    /// Opens (creating) the cache folder for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<CompileCache> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let cache = CompileCache {
            dir: dir.to_path_buf(),
            compat: format!("{:016x}", h.finish()),
            refusals: Arc::default(),
            stored: Arc::default(),
        };
        // Said once at start; each load checks again.
        cache.dir_trusted();
        prune(dir, MAX_ENTRIES, MAX_BYTES);
        Ok(cache)
    }

    /// Folders and entries refused so far (see the module docs).
    pub fn refusals(&self) -> &Arc<AtomicU64> {
        &self.refusals
    }

    fn refuse(&self, path: &Path, why: &str) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            path = %path.display(),
            "compile cache refused: {why}; compiling instead (make it the gateway user's own, mode 0700 for the folder and 0600 for entries)"
        );
    }

    /// Whether the folder may be used now (refusing it if not).
    fn dir_trusted(&self) -> bool {
        match std::fs::metadata(&self.dir) {
            Ok(meta) => match untrusted(&meta) {
                None => true,
                Some(why) => {
                    self.refuse(&self.dir, &why);
                    false
                }
            },
            Err(_) => false,
        }
    }

    fn entry(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.compat))
    }

    /// Loads the precompiled form of `bytes` (whose hash is `sha256`), or
    /// compiles and stores it.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        if !self.dir_trusted() {
            let component = compile(engine, bytes)?;
            return Ok((component, CacheOutcome::Refused));
        }
        let path = self.entry(sha256);
        let mut refused = false;
        if let Some(component) = self.try_load(engine, &path, &mut refused) {
            // Recently used: the last to be pruned.
            let _ = std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok((component, CacheOutcome::Hit));
        }
        if refused {
            // Left where it is: it is not ours to replace.
            return Ok((compile(engine, bytes)?, CacheOutcome::Refused));
        }
        let compiled = engine.precompile_component(bytes)?;
        let component = deserialize(engine, &compiled)?;
        if let Err(e) = self.store(&path, &compiled) {
            tracing::warn!(path = %path.display(), "cannot write the compile cache: {e}");
        }
        if self.stored.fetch_add(1, Ordering::Relaxed) + 1 >= PRUNE_EVERY {
            self.stored.store(0, Ordering::Relaxed);
            prune(&self.dir, MAX_ENTRIES, MAX_BYTES);
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn try_load(&self, engine: &Engine, path: &Path, refused: &mut bool) -> Option<Component> {
        // Checked on the open file, so what is checked is what is read.
        let mut file = std::fs::File::open(path).ok()?;
        if let Some(why) = untrusted(&file.metadata().ok()?) {
            self.refuse(path, &why);
            *refused = true;
            return None;
        }
        let mut data = Vec::new();
        file.read_to_end(&mut data).ok()?;
        let valid = data.len() > 32 && {
            let (code, digest) = data.split_at(data.len() - 32);
            Sha256::digest(code).as_slice() == digest
        };
        if !valid {
            tracing::warn!(path = %path.display(), "discarding a corrupt compile cache entry");
            let _ = std::fs::remove_file(path);
            return None;
        }
        match deserialize(engine, &data[..data.len() - 32]) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "discarding an unusable compile cache entry: {e:#}");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    fn store(&self, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
        let tmp = path.with_extension(format!(
            "tmp.{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let result = (|| {
            let mut options = std::fs::File::options();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            f.write_all(compiled)?;
            f.write_all(&Sha256::digest(compiled))?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Removes the least recently modified `.cwasm` entries of `dir` past
/// `max` entries or `max_bytes` together.
fn prune(dir: &Path, max: usize, max_bytes: u64) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = read
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    let mut bytes: u64 = entries.iter().map(|e| e.1).sum();
    if entries.len() <= max && bytes <= max_bytes {
        return;
    }
    entries.sort();
    let mut count = entries.len();
    let excess = entries.iter().take_while(|(_, len, _)| {
        let over = count > max || bytes > max_bytes;
        if over {
            count -= 1;
            bytes -= len;
        }
        over
    });
    let excess: Vec<PathBuf> = excess.map(|(_, _, p)| p.clone()).collect();
    for path in excess {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "compile cache: pruned"),
            Err(e) => tracing::warn!(path = %path.display(), "compile cache: cannot prune: {e}"),
        }
    }
}

/// Compiles without caching.
pub fn compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    Component::new(engine, bytes)
}

#[expect(
    unsafe_code,
    reason = "deserializing runs precompiled machine code; the bytes come from this \
              engine's own precompile_component, stored in a user-private folder and \
              checked against their SHA-256 before use"
)]
fn deserialize(engine: &Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `compiled` was produced by `Engine::precompile_component` (just
    // now, or earlier and stored, by this user only, in a folder and file
    // no one else may write, both checked before the read, with a digest
    // that was verified above), and
    // wasmtime checks the engine compatibility header itself.
    unsafe { Component::deserialize(engine, compiled) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_most_recently_used_entries() {
        let dir = std::env::temp_dir().join(format!("wasmgate-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for i in 0..6u64 {
            let p = dir.join(format!("{i}.cwasm"));
            let f = std::fs::File::create(&p).unwrap();
            f.set_modified(base + std::time::Duration::from_secs(i))
                .unwrap();
        }
        std::fs::write(dir.join("other.txt"), b"not an entry").unwrap();
        prune(&dir, 4, u64::MAX);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["2.cwasm", "3.cwasm", "4.cwasm", "5.cwasm", "other.txt"]
        );
        // Past the bytes: 10 bytes each, 25 kept, so the two oldest go.
        for i in 2..6u64 {
            std::fs::write(dir.join(format!("{i}.cwasm")), [0u8; 10]).unwrap();
            let f = std::fs::File::options()
                .write(true)
                .open(dir.join(format!("{i}.cwasm")))
                .unwrap();
            f.set_modified(base + std::time::Duration::from_secs(i))
                .unwrap();
        }
        prune(&dir, 100, 25);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["4.cwasm", "5.cwasm", "other.txt"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
