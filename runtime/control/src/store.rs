//! The data directory (`admin.data_dir`): what the management API changed,
//! kept across restarts.
//!
//! ```text
//! <data_dir>/state.json            the filter store and, when the running
//!                                  config came through the API, its text
//! <data_dir>/modules/<sha256>.wasm every stored version's bytes
//! <data_dir>/descriptors/<sha256>.pb every descriptor set put through the API
//! ```
//!
//! - **Crash-safe.** Module files are written (to a temporary name, synced,
//!   renamed) before `state.json` names them, and `state.json` is replaced
//!   the same way, so a crash at any point leaves the old state or the new
//!   one, never a mix. Module files no state names any more are removed
//!   after the state is written.
//! - **Checked on the way back.** A module's bytes must hash to the name
//!   they are stored under; a mismatch stops the start with the file named.
//! - **One owner.** The gateway holds an exclusive lock on `<data_dir>/lock`
//!   while it runs. A process that finds it held waits (a new process
//!   taking over the sockets of the one it replaces gets the folder when
//!   that one starts its drain), and gives up after a while.
//! - **Private.** The folder is made 0700 and its files 0600: `state.json`
//!   holds the config text, which may hold the admin token.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use wasmgate_engine::sha256_hex;
use wasmgate_proxy::canary::CanarySpec;

/// The layout version `state.json` is written in.
const FORMAT: u32 = 1;

/// What `state.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Saved {
    /// The config text, when the running config was put through the API.
    #[serde(default)]
    pub config: Option<String>,
    /// Every filter's store.
    #[serde(default)]
    pub filters: BTreeMap<String, SavedFilter>,
    /// The configs of the tenants put through the API, by name.
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
    /// The descriptor sets put through the API, by name.
    #[serde(default)]
    pub descriptors: BTreeMap<String, SavedDescriptor>,
}

/// A descriptor set put through the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedDescriptor {
    /// The sha256 of its bytes (its file's name).
    pub sha256: String,
    /// The file of `[descriptors.NAME]` it stands in for.
    pub replaces: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    #[serde(flatten)]
    saved: Saved,
}

/// One filter's store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedFilter {
    /// The last version number given.
    pub last: u64,
    /// The current version.
    pub current: u64,
    /// The version before it.
    pub previous: Option<u64>,
    /// Whether the API (not the file) decides the current version.
    pub pinned: bool,
    /// The module file of the config last built.
    pub path: Option<PathBuf>,
    /// The versions kept, oldest first.
    pub versions: Vec<SavedVersion>,
    /// A running canary.
    pub canary: Option<CanarySpec>,
}

/// One stored version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedVersion {
    /// Its number.
    pub version: u64,
    /// The sha256 of its bytes (the module file's name).
    pub sha256: String,
    /// `file` or `upload`.
    pub source: String,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds its lock.
    #[error("{0} is in use by another wasmgate process (its lock is held)")]
    Locked(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// An open data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Held open, with its exclusive lock, while the gateway runs; `None`
    /// for a directory only read (see [`DataDir::read_only`]).
    lock: Option<std::fs::File>,
}

impl DataDir {
    /// Opens (creating it if needed) the data directory at `path`, and
    /// takes its lock.
    pub fn open(path: &Path) -> Result<DataDir, OpenError> {
        let other = OpenError::Other;
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        for sub in ["modules", "descriptors"] {
            builder
                .create(path.join(sub))
                .map_err(|e| other(format!("cannot create {}: {e}", path.display())))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| other(format!("cannot make {} private: {e}", path.display())))?;
        }
        let lock_path = path.join("lock");
        let lock = private_file(&lock_path, false)
            .map_err(|e| other(format!("cannot write in {}: {e}", path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked(path.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(other(format!("cannot lock {}: {e}", lock_path.display())));
            }
        }
        Ok(DataDir {
            path: path.to_owned(),
            lock: Some(lock),
        })
    }

    /// The data directory at `path`, to read without its lock (another
    /// process holds it); it cannot be written.
    pub fn read_only(path: &Path) -> DataDir {
        DataDir {
            path: path.to_owned(),
            lock: None,
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }

    /// What the directory holds (nothing, the first time).
    pub fn load(&self) -> Result<Saved, String> {
        let file = self.state_file();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        };
        let parsed: File = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a wasmgate state file: {e}", file.display()))?;
        if parsed.format != FORMAT {
            return Err(format!(
                "{} has format {}; this wasmgate reads format {FORMAT}",
                file.display(),
                parsed.format
            ));
        }
        Ok(parsed.saved)
    }

    /// The bytes of the module stored as `sha256`, checked against it.
    pub fn module(&self, sha256: &str) -> Result<Vec<u8>, String> {
        self.blob(Blob::Module, sha256)
    }

    /// The bytes of the descriptor set stored as `sha256`, checked against it.
    pub fn descriptor(&self, sha256: &str) -> Result<Vec<u8>, String> {
        self.blob(Blob::Descriptor, sha256)
    }

    fn blob(&self, kind: Blob, sha256: &str) -> Result<Vec<u8>, String> {
        if !is_sha256(sha256) {
            return Err(format!("{sha256:?} is not a sha256"));
        }
        let file = self.path.join(kind.folder()).join(kind.file(sha256));
        let bytes =
            std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(format!(
                "{} is damaged: its sha256 is {actual}",
                file.display()
            ));
        }
        Ok(bytes)
    }

    /// Writes `saved`, with the `modules` and `descriptors` (sha256, bytes)
    /// it names, and removes the files of either it no longer names.
    pub fn save(
        &self,
        saved: &Saved,
        modules: &[(&str, &[u8])],
        descriptors: &[(&str, &[u8])],
    ) -> std::io::Result<()> {
        if self.lock.is_none() {
            return Err(std::io::Error::other(
                "the data directory is not locked by this process",
            ));
        }
        let mut names = [HashSet::new(), HashSet::new()];
        for (kind, blobs) in [(Blob::Module, modules), (Blob::Descriptor, descriptors)] {
            for (sha, bytes) in blobs {
                let name = kind.file(sha);
                let file = self.path.join(kind.folder()).join(&name);
                if names[kind as usize].insert(name) && !file.exists() {
                    write_atomic(&file, bytes)?;
                }
            }
        }
        let text = serde_json::to_vec_pretty(&File {
            format: FORMAT,
            saved: saved.clone(),
        })
        .map_err(std::io::Error::other)?;
        write_atomic(&self.state_file(), &text)?;
        // The new state is in place: what follows is tidying, and its
        // failure must not be reported as the change failing.
        for kind in [Blob::Module, Blob::Descriptor] {
            let folder = self.path.join(kind.folder());
            match std::fs::read_dir(&folder) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if !names[kind as usize].contains(&name) {
                            let _ = std::fs::remove_file(entry.path());
                        }
                    }
                }
                Err(e) => tracing::warn!("cannot list {}: {e}", folder.display()),
            }
        }
        Ok(())
    }
}

/// What the directory keeps by content hash.
#[derive(Debug, Clone, Copy)]
enum Blob {
    Module = 0,
    Descriptor = 1,
}

impl Blob {
    fn folder(self) -> &'static str {
        match self {
            Blob::Module => "modules",
            Blob::Descriptor => "descriptors",
        }
    }

    fn file(self, sha256: &str) -> String {
        match self {
            Blob::Module => format!("{sha256}.wasm"),
            Blob::Descriptor => format!("{sha256}.pb"),
        }
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Creates (or truncates, or just opens) a file only its owner can read.
fn private_file(path: &Path, truncate: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::File::options();
    options.write(true).create(true).truncate(truncate);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one: a synced temporary file (named for this process) renamed over it,
/// then the directory synced. Once the rename is done the new file is in
/// place, so a failed directory sync is only logged.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let written = (|| {
        let mut f = private_file(&tmp, true)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!("cannot sync {}: {e}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_modules_round_trip_and_damage_is_named() {
        let dir = std::env::temp_dir().join(format!("wasmgate-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = DataDir::open(&dir).unwrap();
        assert!(d.load().unwrap().filters.is_empty(), "empty the first time");

        let a = b"module a".as_slice();
        let sha = sha256_hex(a);
        let mut saved = Saved {
            config: Some("[server]\n".into()),
            ..Saved::default()
        };
        saved.filters.insert(
            "f".into(),
            SavedFilter {
                last: 3,
                current: 3,
                previous: Some(2),
                pinned: true,
                path: Some("f.wasm".into()),
                versions: vec![SavedVersion {
                    version: 3,
                    sha256: sha.clone(),
                    source: "upload".into(),
                    created_ms: 1,
                }],
                canary: None,
            },
        );
        d.save(&saved, &[(&sha, a)], &[]).unwrap();
        let back = d.load().unwrap();
        assert_eq!(back.config.as_deref(), Some("[server]\n"));
        assert_eq!(back.filters["f"].current, 3);
        assert_eq!(d.module(&sha).unwrap(), a);

        // A module no state names is removed.
        let b = b"module b".as_slice();
        let sha_b = sha256_hex(b);
        d.save(&saved, &[(&sha, a), (&sha_b, b)], &[(&sha_b, b)])
            .unwrap();
        assert_eq!(d.descriptor(&sha_b).unwrap(), b);
        d.save(&saved, &[(&sha, a)], &[]).unwrap();
        assert!(d.module(&sha_b).is_err());
        assert!(
            d.descriptor(&sha_b).is_err(),
            "a descriptor set no state names is removed"
        );

        // Damage is reported with the file's name.
        std::fs::write(dir.join("modules").join(format!("{sha}.wasm")), b"x").unwrap();
        let err = d.module(&sha).unwrap_err();
        assert!(err.contains("damaged"), "{err}");
        assert!(d.module("../../etc/passwd").is_err());

        // One owner at a time.
        let err = DataDir::open(&dir).unwrap_err();
        assert!(matches!(err, OpenError::Locked(_)), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join("state.json")), 0o600);
        }

        std::fs::write(dir.join("state.json"), b"{").unwrap();
        assert!(d.load().unwrap_err().contains("state.json"));
        drop(d);
        assert!(DataDir::open(&dir).is_ok(), "the lock goes with its holder");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
