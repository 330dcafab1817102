//! Watched files (`[watch]`): when the config file or a filter's module file
//! changes, reload, exactly as SIGHUP does ([`Live::reload_from`] on the
//! file the gateway started from): everything is read and validated before
//! the swap, and a change that does not load (a half-written module, a
//! config with an error) is logged and counted, and the running generation
//! stays.
//!
//! - **Folders, not files.** The parent folder of every watched file is
//!   watched (not recursively), so a file replaced by a rename (editors,
//!   deployment tools, a Kubernetes ConfigMap's symlink swap) is seen as
//!   well as one written in place.
//! - **Contents decide.** Changes are debounced per path (`watch.debounce`
//!   of quiet), then the watched files' SHA-256 are compared with what was
//!   last seen: only a difference reloads. A file touched without changing
//!   costs a hash, never a reload; other files in the same folders (a log
//!   written next to the config) are not read at all.
//! - **What was last seen** starts as what the running generation was
//!   built from (the config text, each filter's module SHA-256), and is
//!   taken again whenever the running config changes: a file changed while
//!   the gateway was built, or while a reload read it, reloads at once
//!   rather than being missed. A config put through the API and a pinned
//!   filter's module were not read from their files: for those, the file as
//!   last seen stands.
//! - **Re-armed.** After a reload, and whenever the running config changes
//!   by other ways (SIGHUP, the management API), the watched set follows
//!   the filter paths the config names; the paths in the config file are
//!   watched too even when that file was refused (so a module it names can
//!   arrive after it).
//! - **Symlinked folders followed.** Folders are watched where they
//!   resolve; on the same one-second check, a folder reached through a
//!   symlink that now leads elsewhere (`/srv/current -> releases/v2`) is
//!   watched anew and the files compared.
//! - A filter pinned through the management API (upload, activate,
//!   promote, rollback) does not read its file (the reload semantics): a
//!   change to that file reloads, but the pinned version keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_mini::notify::event::{AccessKind, AccessMode};
use notify_debouncer_mini::notify::{
    self, Event, EventHandler, EventKind, RecommendedWatcher, RecursiveMode, Watcher, WatcherKind,
};
use notify_debouncer_mini::{
    DebounceEventResult, DebouncedEvent, DebouncedEventKind, Debouncer, new_debouncer_opt,
};
use tokio::sync::{mpsc, watch};

use crate::live::Generation;
use crate::live::Live;
use wasmgate_config::{Config, WatchConfig};

/// How often the watcher checks whether the running config changed by
/// another way (SIGHUP, the management API), to follow its filter paths.
const CONFIG_CHECK: Duration = Duration::from_secs(1);

/// The running watcher; stopped by [`FileWatcher::stop`] (or, abandoning
/// a reload in progress, when dropped).
#[derive(Debug)]
pub struct FileWatcher {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl FileWatcher {
    /// Starts watching the config file `live` started from and every module
    /// file its config names.
    pub fn start(live: Arc<Live>, config: &WatchConfig) -> std::io::Result<FileWatcher> {
        let (tx, rx) = mpsc::unbounded_channel();
        let debouncer = new_debouncer_opt::<_, ChangesOnly>(
            notify_debouncer_mini::Config::default().with_timeout(config.debounce),
            move |r: DebounceEventResult| {
                let _ = tx.send(r);
            },
        )
        .map_err(|e| std::io::Error::other(format!("watch: cannot watch files: {e}")))?;
        let config = live.config();
        let files = wanted_files(&live, &config);
        let mut watched = Watched {
            debouncer,
            dirs: BTreeSet::new(),
            folders: BTreeMap::new(),
            entries: BTreeSet::new(),
            listings: BTreeSet::new(),
            seen: BTreeMap::new(),
            built: BTreeMap::new(),
            config,
        };
        // Watched from here on; the task then compares the files with what
        // the running generation was built from.
        watched.rearm(&files, BTreeMap::new());
        tracing::info!(
            files = files.len(),
            folders = watched.dirs.len(),
            "watching the config and module files"
        );
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(run(live, watched, rx, stopping));
        Ok(FileWatcher {
            task: Some(task),
            stop,
        })
    }

    /// Stops watching: no reload starts from now on, and one in progress
    /// ends before this returns: applied whole (activated and written to
    /// the data directory), or refused, which is what a shutdown makes of
    /// it ([`Live::abandon_builds`]); the data directory describes what ran
    /// either way.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The platform's watcher, passing on only events that can change a file:
/// opening, reading and closing a file unwritten are dropped before the
/// debouncer sees them. (inotify reports opens; without this, the watcher's
/// own reads, comparing and reloading, would wake it again after every
/// debounce, for ever.)
struct ChangesOnly(RecommendedWatcher);

/// An access that cannot have changed the file.
fn is_read_only(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(a) if !matches!(a, AccessKind::Close(AccessMode::Write)))
}

impl Watcher for ChangesOnly {
    fn new<F: EventHandler>(mut handler: F, config: notify::Config) -> notify::Result<Self> {
        let filtered = move |event: notify::Result<Event>| {
            if !event.as_ref().is_ok_and(|e| is_read_only(&e.kind)) {
                handler.handle_event(event);
            }
        };
        RecommendedWatcher::new(filtered, config).map(ChangesOnly)
    }

    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> notify::Result<()> {
        self.0.watch(path, mode)
    }

    fn unwatch(&mut self, path: &Path) -> notify::Result<()> {
        self.0.unwatch(path)
    }

    fn kind() -> WatcherKind {
        RecommendedWatcher::kind()
    }
}

/// What is watched now.
struct Watched {
    debouncer: Debouncer<ChangesOnly>,
    /// Folders watched (as given to the watcher: canonical paths).
    dirs: BTreeSet<PathBuf>,
    /// The folder of each watched file as last resolved, to notice one
    /// that moved.
    folders: BTreeMap<PathBuf, PathBuf>,
    /// The watched files as the watcher names them (canonical folder, file
    /// name), to tell their events from those of other files.
    entries: BTreeSet<PathBuf>,
    /// The tenants' folders (canonical), where a `.toml` file appearing is
    /// a change too (a new tenant).
    listings: BTreeSet<PathBuf>,
    /// Each watched file and the SHA-256 of its contents as last acted on:
    /// what the running generation was built from, or what the last reload
    /// read (refused or not), or when neither tells, what the file held when
    /// first watched (`None`: could not be read).
    seen: BTreeMap<PathBuf, Option<String>>,
    /// The SHA-256 of what the running generation read from each file that
    /// decides it (not the config file when the config came through the
    /// API, not the module of a filter the API pinned).
    built: BTreeMap<PathBuf, String>,
    /// The running config the watched set was computed from.
    config: Arc<Config>,
}

impl Watched {
    /// Watches the folders of `files` and no others, and takes `built` (see
    /// [`Watched::built`]) as what the files held where it changed: a
    /// generation built from other contents than last seen (a change made
    /// while it was built), or a watched file's folder that now resolves
    /// elsewhere, makes the watched files worth comparing now, which the
    /// return value tells. Other files new to the set get their
    /// fingerprint now; files no longer in it are forgotten.
    fn rearm(&mut self, files: &BTreeSet<PathBuf>, built: BTreeMap<PathBuf, String>) -> bool {
        let folders = folders_of(files);
        let dirs: BTreeSet<PathBuf> = folders.values().cloned().collect();
        // A file whose folder now resolves elsewhere may hold anything,
        // and no event said so.
        let mut compare = folders
            .iter()
            .any(|(f, d)| self.folders.get(f).is_some_and(|old| old != d));
        self.folders = folders;
        for gone in self.dirs.difference(&dirs) {
            let _ = self.debouncer.watcher().unwatch(gone);
        }
        let mut watching = BTreeSet::new();
        for dir in &dirs {
            if self.dirs.contains(dir) {
                watching.insert(dir.clone());
                continue;
            }
            match self
                .debouncer
                .watcher()
                .watch(dir, RecursiveMode::NonRecursive)
            {
                Ok(()) => {
                    watching.insert(dir.clone());
                }
                Err(e) => tracing::warn!(
                    folder = %dir.display(),
                    "watch: cannot watch this folder, changes in it are not seen: {e}"
                ),
            }
        }
        self.dirs = watching;
        self.entries = files.iter().filter_map(|f| entry(f)).collect();
        self.listings = files
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| n == LISTING))
            .filter_map(|f| folder(f))
            .collect();
        self.seen.retain(|f, _| files.contains(f));
        for f in files {
            match built.get(f) {
                // Only where it changed: a refused reload leaves the running
                // generation as it was, and the file as last seen.
                Some(sha) if self.built.get(f) != Some(sha) => {
                    let sha = Some(sha.clone());
                    compare |= self.seen.get(f) != Some(&sha);
                    self.seen.insert(f.clone(), sha);
                }
                _ => {
                    if !self.seen.contains_key(f) {
                        self.seen.insert(f.clone(), fingerprint(f));
                    }
                }
            }
        }
        self.built = built;
        compare
    }

    /// Whether `batch` settles a change to a watched file: one of them, or
    /// a symlink on the way to one (a Kubernetes ConfigMap swaps its
    /// `..data` link), went quiet for the whole debounce, and none is still
    /// being written. Other files in the watched folders (a log written
    /// next to the config) are not looked at further.
    fn settled(&self, batch: &[DebouncedEvent]) -> bool {
        let mut targets = None;
        let mut settled = false;
        for event in batch {
            let in_listing = event.path.extension().is_some_and(|x| x == "toml")
                && event
                    .path
                    .parent()
                    .is_some_and(|p| self.listings.contains(p));
            let watched = self.entries.contains(&event.path) || in_listing || {
                let targets = targets.get_or_insert_with(|| self.targets());
                leads_to_one(&event.path, targets)
            };
            match (watched, &event.kind) {
                (false, _) => {}
                (true, DebouncedEventKind::Any) => settled = true,
                // Still changing after a whole debounce period (a download,
                // a copy slower than the debounce): reported every period
                // until it goes quiet; read then.
                (true, _) => return false,
            }
        }
        settled
    }

    /// Where the watched files are now, symlinks resolved.
    fn targets(&self) -> Vec<PathBuf> {
        self.seen
            .keys()
            .filter_map(|f| std::fs::canonicalize(f).ok())
            .collect()
    }

    /// Follows a watched folder reached through a symlink that now leads
    /// elsewhere (`/srv/current -> releases/v2`, swapped by a rename in a
    /// folder that is not watched): watches where it leads now, and returns
    /// the watched files that differ from what was last seen.
    fn follow_moves(&mut self) -> Vec<PathBuf> {
        let files: BTreeSet<PathBuf> = self.seen.keys().cloned().collect();
        if folders_of(&files) == self.folders {
            return Vec::new();
        }
        tracing::info!(
            "watch: a watched folder now resolves elsewhere (a symlink swapped); following it"
        );
        let built = self.built.clone();
        match self.rearm(&files, built) {
            true => self.changed(),
            false => Vec::new(),
        }
    }

    /// The watched files whose contents differ from what was last seen;
    /// records what is seen now.
    fn changed(&mut self) -> Vec<PathBuf> {
        tracing::debug!(
            config = %self.config.source,
            files = self.seen.len(),
            "watch: comparing the watched files"
        );
        let mut changed = Vec::new();
        for (file, seen) in &mut self.seen {
            let now = fingerprint(file);
            if *seen != now {
                changed.push(file.clone());
                *seen = now;
            }
        }
        changed
    }
}

async fn run(
    live: Arc<Live>,
    watched: Watched,
    mut events: mpsc::UnboundedReceiver<DebounceEventResult>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(CONFIG_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A file changed after the running generation read it (while the
    // gateway was built) is reloaded now.
    let (mut watched, mut changed) = rearm(&live, watched).await;
    loop {
        while !changed.is_empty() {
            if *stop.borrow() {
                return;
            }
            let list: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
            tracing::info!(changed = %list.join(", "), "watch: files changed, reloading");
            // Logged and counted either way; a refusal keeps the running
            // generation.
            let _ = live.reload_from(live.file()).await;
            (watched, changed) = rearm(&live, watched).await;
        }
        tokio::select! {
            biased;
            // Stopping, or the watcher is gone.
            _ = stop.changed() => return,
            event = events.recv() => match event {
                None => return,
                Some(Err(e)) => tracing::warn!("watch: {e}"),
                Some(Ok(batch)) => {
                    let paths: Vec<String> =
                        batch.iter().map(|e| e.path.display().to_string()).collect();
                    // Hashing modules of a few MiB: off the async workers.
                    (watched, changed) = tokio::task::spawn_blocking(move || {
                        let changed = match watched.settled(&batch) {
                            true => watched.changed(),
                            false => Vec::new(),
                        };
                        (watched, changed)
                    })
                    .await
                    .expect("the fingerprint task does not panic");
                    // Everything queued before these events has been handled
                    // too (one queue): tests wait for this line to know the
                    // watcher has seen a change and what it decided.
                    tracing::debug!(
                        file = %live.file().display(),
                        paths = %paths.join(", "),
                        changed = changed.len(),
                        "watch: change events handled"
                    );
                }
            },
            _ = tick.tick() => {
                if !Arc::ptr_eq(&live.config(), &watched.config) {
                    (watched, changed) = rearm(&live, watched).await;
                } else {
                    (watched, changed) = tokio::task::spawn_blocking(move || {
                        let changed = watched.follow_moves();
                        (watched, changed)
                    })
                    .await
                    .expect("the folder check does not panic");
                }
            }
        }
    }
}

/// Follows the running generation: watches the filter paths of its config
/// (and of the config file), takes what it was built from, and returns the
/// watched files that differ from that.
///
/// Logs (debug) that it did and how many files differ, which is what the
/// watcher does next: reload if any, otherwise wait for events.
async fn rearm(live: &Arc<Live>, mut watched: Watched) -> (Watched, Vec<PathBuf>) {
    let (config, generation, from_api, pinned) = live.watch_view().await;
    let view = live.clone();
    let (watched, changed) = tokio::task::spawn_blocking(move || {
        let files = wanted_files(&view, &config);
        let built = built_from(&view, &config, &generation, from_api, &pinned);
        watched.config = config;
        let changed = match watched.rearm(&files, built) {
            true => watched.changed(),
            false => Vec::new(),
        };
        (watched, changed)
    })
    .await
    .expect("the re-arm task does not panic");
    tracing::debug!(
        file = %live.file().display(),
        changed = changed.len(),
        "watch: following the running config"
    );
    (watched, changed)
}

/// What the running generation read from the files that decide it: the
/// config file's text (unless the config came through the API) and the
/// module of every filter the API has not pinned.
fn built_from(
    live: &Live,
    config: &Config,
    generation: &Generation,
    from_api: bool,
    pinned: &[String],
) -> BTreeMap<PathBuf, String> {
    let mut built = BTreeMap::new();
    if !from_api {
        let text = wasmgate_engine::sha256_hex(config.text.as_bytes());
        built.insert(absolute(live.file()), text);
    }
    for scope in config.scopes() {
        for (name, f) in scope.filters {
            let key = wasmgate_config::Scoped::new(scope.tenant.clone(), name.as_str()).key();
            if let Some(l) = generation.modules.get(&key)
                && !pinned.contains(&key)
            {
                let module = l.current.module.sha256().to_owned();
                built.insert(absolute(&f.path), module);
            }
        }
    }
    // What each file-managed tenant was built from.
    for t in config.tenants.values() {
        if let wasmgate_config::Managed::File(path) = &t.managed {
            built.insert(
                absolute(path),
                wasmgate_engine::sha256_hex(t.text.as_bytes()),
            );
        }
    }
    built
}

/// The config file, every module file the running config names, and those
/// the config file names if it parses.
fn wanted_files(live: &Live, config: &Config) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    files.insert(absolute(live.file()));
    let mut add = |c: &Config| {
        for scope in c.scopes() {
            for f in scope.filters.values() {
                files.insert(absolute(&f.path));
            }
        }
        // The tenants' folder: each tenant's file, and the list of them.
        if let Some(dir) = c.tenancy.as_ref().and_then(|t| t.dir.as_ref()) {
            files.insert(absolute(&dir.join(LISTING)));
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    files.insert(absolute(&p));
                }
            }
        }
    };
    add(config);
    if let Ok((c, _)) = Config::load_beside(live.file(), config) {
        add(&c);
    }
    files
}

/// `path` made absolute against the working directory, so the folder of a
/// bare file name is the working directory.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The folder to watch for `file`: its parent, canonical (the watcher
/// reports paths under the folder as given).
fn folder(file: &Path) -> Option<PathBuf> {
    let parent = file.parent()?;
    Some(std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf()))
}

/// The folder to watch for each of `files`.
fn folders_of(files: &BTreeSet<PathBuf>) -> BTreeMap<PathBuf, PathBuf> {
    files
        .iter()
        .filter_map(|f| Some((f.clone(), folder(f)?)))
        .collect()
}

/// How the watcher names `file`: its canonical folder and its name.
fn entry(file: &Path) -> Option<PathBuf> {
    Some(folder(file)?.join(file.file_name()?))
}

/// Whether `path` is a symlink that a watched file is reached through
/// (`targets`: the watched files, resolved).
fn leads_to_one(path: &Path, targets: &[PathBuf]) -> bool {
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return false;
    }
    std::fs::canonicalize(path).is_ok_and(|to| targets.iter().any(|t| t.starts_with(&to)))
}

/// The name standing for a tenants' folder's list of `.toml` files among
/// the watched files (no such file exists): its fingerprint is that list's,
/// so a tenant's file added or removed is a change.
const LISTING: &str = ".wasmgate-tenants-listing";

/// The SHA-256 of the file's contents, or `None` if it cannot be read (for
/// [`LISTING`], of the names of the `.toml` files in its folder).
fn fingerprint(file: &Path) -> Option<String> {
    if file.file_name().is_some_and(|n| n == LISTING) {
        let mut names: Vec<String> = std::fs::read_dir(file.parent()?)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        names.sort();
        return Some(wasmgate_engine::sha256_hex(names.join("\n").as_bytes()));
    }
    std::fs::read(file)
        .ok()
        .map(|bytes| wasmgate_engine::sha256_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_and_reading_are_not_changes() {
        use notify::event::{CreateKind, ModifyKind};
        for read in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Open(AccessMode::Write)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
        ] {
            assert!(is_read_only(&read), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Create(CreateKind::File),
            EventKind::Any,
        ] {
            assert!(!is_read_only(&change), "{change:?}");
        }
    }

    #[test]
    fn a_bare_file_name_is_watched_in_the_working_directory() {
        let f = absolute(Path::new("gateway.toml"));
        assert!(f.is_absolute(), "{f:?}");
        assert_eq!(
            folder(&f),
            Some(std::fs::canonicalize(std::env::current_dir().unwrap()).unwrap())
        );
    }
}
