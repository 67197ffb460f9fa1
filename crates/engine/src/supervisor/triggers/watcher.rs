//! The file watcher of one app: process-only wiring around `notify`
//! (inotify), bounded.
//!
//! Two threads: notify's own, which reads the kernel's events and hands
//! each to [`on_event`], and `herd-watch`, which walks folders and adds
//! their watches (notify's `watch` waits for notify's thread, so the event
//! handler cannot add watches itself). What the handler learns goes into one
//! small record ([`Seen`]): the first changed path and a count, new folders
//! (at most [`NEW_DIRS`]; past that, one flag to walk everything again), a
//! few warnings. The app task is woken through a channel of one slot: a
//! flag, never a queue. herd watches each folder by itself (not notify's
//! recursive mode), so ignored trees such as `node_modules` cost no
//! watches.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::RecursiveMode;
use tokio::sync::mpsc;

use super::filter::{Filter, WatchDir};
use crate::config::WatchSpec;

/// New folders waiting to be walked, at most; past that the watcher walks
/// every root again.
const NEW_DIRS: usize = 256;
/// Warnings waiting for the app, at most.
const WARNINGS: usize = 4;

/// One app's watcher; dropping it stops the threads.
pub(crate) struct Watcher {
    shared: Arc<Shared>,
    /// What it watches, to tell whether a new definition changes that.
    spec: WatchSpec,
    cwd: PathBuf,
}

struct Shared {
    seen: Mutex<Seen>,
    /// Wakes `herd-watch`: folders to walk, or stop.
    walk: Condvar,
    /// Wakes the app task (one slot).
    wake: mpsc::Sender<()>,
}

/// What the watcher learnt since the app last asked.
#[derive(Debug, Default)]
struct Seen {
    first: Option<PathBuf>,
    changes: u64,
    new_dirs: Vec<PathBuf>,
    rescan: bool,
    warnings: Vec<String>,
    /// The first walk is done: the folders watched then.
    ready: Option<u64>,
    stop: bool,
}

/// Changes and warnings since the last [`Watcher::take`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) first: Option<PathBuf>,
    pub(crate) count: u64,
    pub(crate) warnings: Vec<String>,
    /// The watcher just finished its first walk, watching this many folders.
    pub(crate) ready: Option<u64>,
}

impl Watcher {
    /// Start watching what `spec` names, for an app working in `cwd`;
    /// `wake` is told when there is something to [`Watcher::take`]. What
    /// cannot be watched is a warning, never an error: the app runs anyway.
    pub(crate) fn start(spec: &WatchSpec, cwd: &Path, wake: mpsc::Sender<()>) -> Watcher {
        let shared = Arc::new(Shared {
            seen: Mutex::new(Seen::default()),
            walk: Condvar::new(),
            wake,
        });
        let watcher = Watcher {
            shared: shared.clone(),
            spec: spec.clone(),
            cwd: cwd.to_path_buf(),
        };
        let filter = match Filter::new(spec, cwd) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                shared.warn(format!("not watching files: {e}"));
                return watcher;
            }
        };
        let thread = std::thread::Builder::new()
            .name("herd-watch".into())
            .spawn(move || watch(shared, filter));
        if let Err(e) = thread {
            watcher
                .shared
                .warn(format!("not watching files: cannot start a thread: {e}"));
        }
        watcher
    }

    /// Does this watcher watch what `spec` names for `cwd`?
    pub(crate) fn is_for(&self, spec: &WatchSpec, cwd: &Path) -> bool {
        self.spec == *spec && self.cwd == cwd
    }

    /// What happened since the last call.
    pub(crate) fn take(&self) -> Changes {
        let mut seen = self.shared.lock();
        Changes {
            first: seen.first.take(),
            count: std::mem::take(&mut seen.changes),
            warnings: std::mem::take(&mut seen.warnings),
            ready: seen.ready.take(),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.walk.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        // The record stays consistent whatever panicked while holding it.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn warn(&self, text: String) {
        let mut seen = self.lock();
        if seen.warnings.len() < WARNINGS && !seen.warnings.contains(&text) {
            seen.warnings.push(text);
        }
        drop(seen);
        let _ = self.wake.try_send(());
    }
}

/// `herd-watch`: watch the roots, then walk new folders as they come, until stopped.
fn watch(shared: Arc<Shared>, filter: Arc<Filter>) {
    let handler = {
        let (shared, filter) = (shared.clone(), filter.clone());
        move |event| on_event(&shared, &filter, event)
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => return shared.warn(format!("not watching files: {e}")),
    };
    let mut walker = Walker {
        watcher: &mut watcher,
        filter: &filter,
        shared: &shared,
        full: false,
        folders: 0,
    };
    walker.roots();
    shared.lock().ready = Some(walker.folders);
    let _ = shared.wake.try_send(());
    loop {
        let (dirs, rescan) = {
            let mut seen = shared.lock();
            while !seen.stop && seen.new_dirs.is_empty() && !seen.rescan {
                seen = shared.walk.wait(seen).unwrap_or_else(|e| e.into_inner());
            }
            if seen.stop {
                return;
            }
            (
                std::mem::take(&mut seen.new_dirs),
                std::mem::take(&mut seen.rescan),
            )
        };
        if rescan {
            walker.roots();
        } else {
            for dir in dirs {
                walker.tree(&dir);
            }
        }
    }
}

/// Adds the watches: each folder by itself.
struct Walker<'a, W> {
    watcher: &'a mut W,
    filter: &'a Filter,
    shared: &'a Shared,
    /// The kernel's limit of watches was hit: watch nothing more.
    full: bool,
    /// Folders watched so far.
    folders: u64,
}

impl<W: notify::Watcher> Walker<'_, W> {
    fn roots(&mut self) {
        for WatchDir { path, recursive } in self.filter.roots() {
            if !path.is_dir() {
                self.shared.warn(format!(
                    "not watching {}: no such folder (create it, or fix the watch paths)",
                    path.display()
                ));
                continue;
            }
            if recursive {
                self.tree(&path);
            } else {
                self.add(&path);
            }
        }
    }

    /// Watch `dir` and every folder under it the filter does not ignore
    /// (symbolic links are not followed).
    fn tree(&mut self, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if self.full || self.shared.lock().stop {
                return;
            }
            if !self.add(&dir) {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) && self.filter.descend(&path) {
                    stack.push(path);
                }
            }
        }
    }

    /// Watch one folder by itself; false if it cannot be watched.
    fn add(&mut self, dir: &Path) -> bool {
        match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.folders += 1;
                true
            }
            Err(e) => {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    self.full = true;
                    self.shared.warn(format!(
                        "stopped adding file watches at {}: the kernel's limit is reached; raise \
                         fs.inotify.max_user_watches (sysctl), or watch less (watch paths, ignore_watch)",
                        dir.display()
                    ));
                } else if !is_gone(&e) {
                    self.shared
                        .warn(format!("cannot watch {}: {e}", dir.display()));
                }
                false
            }
        }
    }
}

/// The folder went away before its watch was added: nothing to say.
fn is_gone(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

/// notify's thread: note what an event means, and wake who must act.
fn on_event(shared: &Shared, filter: &Filter, event: notify::Result<notify::Event>) {
    let event = match event {
        Ok(e) => e,
        Err(e) => return shared.warn(format!("the file watcher failed: {e}")),
    };
    if event.need_rescan() {
        // The kernel's queue overflowed: changes were lost, and maybe folders.
        let mut seen = shared.lock();
        seen.changes += 1;
        seen.rescan = true;
        drop(seen);
        shared.walk.notify_all();
        let _ = shared.wake.try_send(());
        return;
    }
    if !is_change(&event.kind) {
        return;
    }
    let may_be_new_dir = matches!(
        event.kind,
        EventKind::Create(CreateKind::Folder | CreateKind::Any)
            | EventKind::Modify(ModifyKind::Name(
                RenameMode::To | RenameMode::Both | RenameMode::Any
            ))
    );
    let mut changed = false;
    let mut walk = false;
    let mut seen = shared.lock();
    for path in &event.paths {
        if may_be_new_dir && filter.descend(path) && path.is_dir() {
            if seen.new_dirs.len() < NEW_DIRS {
                seen.new_dirs.push(path.clone());
            } else {
                seen.new_dirs.clear();
                seen.rescan = true;
            }
            walk = true;
        }
        if filter.is_change(path) {
            if seen.first.is_none() {
                seen.first = Some(path.clone());
            }
            seen.changes += 1;
            changed = true;
        }
    }
    drop(seen);
    if walk {
        shared.walk.notify_all();
    }
    if changed {
        let _ = shared.wake.try_send(());
    }
}

/// Does this kind of event change a file? (Opening and reading one, which
/// the app itself does all the time, does not.)
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Other => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("herd-watcher-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("src")).unwrap();
        std::fs::create_dir_all(p.join("node_modules/pkg")).unwrap();
        Dir(p)
    }

    /// Wait for a wake, then take what was seen; `None` if nothing came in `within`.
    async fn next(w: &Watcher, rx: &mut mpsc::Receiver<()>, within: Duration) -> Option<Changes> {
        tokio::time::timeout(within, rx.recv()).await.ok()?;
        Some(w.take())
    }

    /// The watcher is ready once an edit it must see is seen.
    async fn settle(w: &Watcher, rx: &mut mpsc::Receiver<()>, probe: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            std::fs::write(probe, "probe").unwrap();
            if let Some(c) = next(w, rx, Duration::from_millis(200)).await {
                if c.count > 0 {
                    // Drain what the probe caused.
                    while next(w, rx, Duration::from_millis(100)).await.is_some() {}
                    return;
                }
            }
        }
        panic!("the watcher never saw {}", probe.display());
    }

    #[tokio::test]
    async fn edits_are_seen_and_ignored_trees_are_not() {
        let d = dir("edits");
        let (tx, mut rx) = mpsc::channel(1);
        let w = Watcher::start(&WatchSpec::default(), &d.0, tx);
        settle(&w, &mut rx, &d.0.join("src/probe.js")).await;
        // Ignored: node_modules, dotfiles; reading a file is no change.
        std::fs::write(d.0.join("node_modules/pkg/index.js"), "x").unwrap();
        std::fs::write(d.0.join(".env"), "x").unwrap();
        let _ = std::fs::read(d.0.join("src/probe.js")).unwrap();
        assert_eq!(next(&w, &mut rx, Duration::from_millis(300)).await, None);
        // A new folder is watched too: a file in it is a change.
        std::fs::create_dir(d.0.join("src/new")).unwrap();
        let c = next(&w, &mut rx, Duration::from_secs(5))
            .await
            .expect("the new folder");
        assert_eq!(c.first.as_deref(), Some(d.0.join("src/new").as_path()));
        let file = d.0.join("src/new/b.js");
        let deadline = Instant::now() + Duration::from_secs(5);
        let seen = loop {
            std::fs::write(&file, "b").unwrap();
            match next(&w, &mut rx, Duration::from_millis(200)).await {
                Some(c) if c.first.as_deref() == Some(file.as_path()) => break true,
                _ if Instant::now() > deadline => break false,
                _ => {}
            }
        };
        assert!(seen, "an edit in a folder made after the start is seen");
    }

    #[tokio::test]
    async fn a_missing_root_is_a_warning() {
        let d = dir("missing");
        let (tx, mut rx) = mpsc::channel(1);
        let spec = WatchSpec {
            paths: vec!["nowhere".into()],
            ..WatchSpec::default()
        };
        let w = Watcher::start(&spec, &d.0, tx);
        let c = next(&w, &mut rx, Duration::from_secs(5))
            .await
            .expect("a warning");
        assert_eq!(c.count, 0);
        assert!(c.warnings[0].contains("nowhere: no such folder"), "{c:?}");
    }

    #[tokio::test]
    async fn a_burst_of_edits_wakes_the_app_through_one_slot() {
        let d = dir("burst");
        let (tx, mut rx) = mpsc::channel(1);
        let w = Watcher::start(&WatchSpec::default(), &d.0, tx);
        settle(&w, &mut rx, &d.0.join("src/probe.js")).await;
        for i in 0..200 {
            std::fs::write(d.0.join("src/a.js"), format!("{i}")).unwrap();
        }
        // Every change is counted in the record, whatever the wakes.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut total = 0;
        while total < 200 && Instant::now() < deadline {
            if let Some(c) = next(&w, &mut rx, Duration::from_millis(200)).await {
                total += c.count;
            }
        }
        assert!(total >= 200, "{total} changes seen");
    }
}
