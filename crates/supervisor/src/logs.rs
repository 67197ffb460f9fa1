//! An app's log files ([`AppLogs`]): whole lines appended — as the app wrote
//! them, with the time before each (`--time`), or one JSON object each
//! (pm2's `log_type: json`) — to one file per stream for all instances, or
//! one per instance (pm2's `merge_logs: false`), and to a file with both
//! streams when one is asked for (pm2's `log_file`); rotation by size
//! (`name-out.log` → `.1` → `.2` …), reopening for logrotate (SIGUSR1) and
//! truncation (`herd flush`).
//!
//! The names are pm2's: `NAME-out.log`, `NAME-error.log`, `NAME.log` for
//! both streams, and per instance `-<slot>` before `.log`
//! ([`instance_log_path`]). herd used to name the stderr file
//! `NAME-err.log`: a home that still has one gets it renamed, with its
//! rotations, the first time the app's logs are opened (when no
//! `NAME-error.log` is there yet), so an app's history stays in one file.
//!
//! A file in the home (the default `logs/NAME-out.log`) is opened, rotated
//! and removed through the home's checked directory ([`herd_home::Dir`]):
//! never through a link, created 0600. A file the user chose elsewhere
//! (`--out-file`) is opened by its path, created 0600.
//!
//! The engine hands over complete lines only (a line split across pipe reads
//! is joined before it gets here), so a timestamp never lands mid-line and a
//! JSON object always holds a whole line. The writer is on the app's output
//! path: a batch costs one `write` per file and no allocation per line (a
//! stamped or JSON batch is built in one buffer kept between batches).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::format::{Item, StrftimeItems};
use herd_engine::machine::Slot;
use herd_engine::supervisor::Stream;
use herd_home::{Access, Dir};
use herd_protocol::{instance_log_path, AppDef, LogType};

use herd_home::Home;

/// Where a log file lives.
#[derive(Debug, Clone)]
enum Place {
    /// In one of the home's checked directories, by name.
    Home(Dir, OsString),
    /// At a path the user chose.
    Path(PathBuf),
}

impl Place {
    fn of(path: &Path, home: &Home) -> Place {
        match home.dir_of(path) {
            Some((dir, name)) => Place::Home(dir.clone(), name.to_os_string()),
            None => Place::Path(path.to_path_buf()),
        }
    }

    /// The rotated file number `n` (`name.N`).
    fn numbered(&self, n: u32) -> Place {
        let suffix = |s: &std::ffi::OsStr| {
            let mut s = s.to_os_string();
            s.push(format!(".{n}"));
            s
        };
        match self {
            Place::Home(dir, name) => Place::Home(dir.clone(), suffix(name)),
            Place::Path(p) => Place::Path(PathBuf::from(suffix(p.as_os_str()))),
        }
    }

    /// Open for appending, created 0600 if missing; whether it was created.
    fn open(&self) -> io::Result<(File, bool)> {
        match self {
            Place::Home(dir, name) => dir.open(name, Access::Append).map(|o| (o.file, o.created)),
            Place::Path(path) => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)?;
                }
                let mut options = OpenOptions::new();
                options.append(true).mode(0o600);
                match options.clone().create_new(true).open(path) {
                    Ok(f) => Ok((f, true)),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        options.create(true).open(path).map(|f| (f, false))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn exists(&self) -> bool {
        match self {
            Place::Home(dir, name) => dir.exists(name),
            Place::Path(p) => p.symlink_metadata().is_ok(),
        }
    }

    fn rename_to(&self, to: &Place) -> io::Result<()> {
        match (self, to) {
            (Place::Home(dir, from), Place::Home(_, to)) => dir.rename(from, to),
            (Place::Path(from), Place::Path(to)) => fs::rename(from, to),
            _ => unreachable!("a file and its rotations share a directory"),
        }
    }

    fn remove(&self) -> io::Result<()> {
        match self {
            Place::Home(dir, name) => dir.remove(name),
            Place::Path(p) => fs::remove_file(p),
        }
    }
}

/// One log file being appended to.
#[derive(Debug)]
pub struct LogFile {
    place: Place,
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: u32,
    /// This LogFile created the file (it did not exist before).
    created: bool,
}

impl LogFile {
    /// Open (create, 0600) `path` for appending, through the home's checked
    /// directory when it is one of the home's files; `max_size` 0 never rotates.
    pub fn open(path: &Path, home: &Home, max_size: u64, keep: u32) -> io::Result<LogFile> {
        LogFile::open_at(Place::of(path, home), path.to_path_buf(), max_size, keep)
    }

    fn open_at(place: Place, path: PathBuf, max_size: u64, keep: u32) -> io::Result<LogFile> {
        let (file, created) = place.open()?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            place,
            path,
            file,
            size,
            max_size,
            keep,
            created,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file a previous image of this process had open (an in-place
    /// upgrade handed its fd over), appended to as before.
    fn kept(
        path: PathBuf,
        home: &Home,
        fd: std::os::fd::OwnedFd,
        max_size: u64,
        keep: u32,
    ) -> io::Result<LogFile> {
        let file = File::from(fd);
        let size = file.metadata()?.len();
        Ok(LogFile {
            place: Place::of(&path, home),
            path,
            file,
            size,
            max_size,
            keep,
            created: false,
        })
    }

    /// Append whole lines, rotating before any line that would take the file
    /// past its size limit (a line is never split over two files; one longer
    /// than the limit gets a file of its own).
    pub fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        let mut rest = lines;
        while !rest.is_empty() {
            let room = self.max_size.saturating_sub(self.size);
            let take = if self.max_size == 0 || rest.len() as u64 <= room {
                rest.len()
            } else {
                // As many whole lines as fit; rotate first if none does.
                match rest[..room as usize].iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    None if self.size > 0 => {
                        self.rotate()?;
                        continue;
                    }
                    None => rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(rest.len(), |i| i + 1),
                }
            };
            self.append(&rest[..take])?;
            rest = &rest[take..];
        }
        Ok(())
    }

    /// Append `chunk` (whole lines). When a write fails part-way (the disk
    /// filled), the whole lines that got in stay and the piece of a line
    /// after them is cut off again: the file never holds a partial line, so
    /// what is written once there is room again starts on a line of its own.
    fn append(&mut self, chunk: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < chunk.len() {
            let error = match self.file.write(&chunk[done..]) {
                Ok(0) => io::Error::from(io::ErrorKind::WriteZero),
                Ok(n) => {
                    done += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            let whole = chunk[..done]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            self.size += whole as u64;
            if done > whole {
                let _ = self.file.set_len(self.size);
            }
            return Err(error);
        }
        self.size += done as u64;
        Ok(())
    }

    /// Shift `path.N` to `path.N+1` (dropping the oldest past `keep`), move
    /// the current file to `path.1`, and start a new one.
    pub fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = self.place.numbered(self.keep).remove();
        for n in (1..self.keep).rev() {
            let from = self.place.numbered(n);
            if from.exists() {
                from.rename_to(&self.place.numbered(n + 1))?;
            }
        }
        self.place.rename_to(&self.place.numbered(1))?;
        self.reopen()
    }

    /// Open the path again (after logrotate moved the file away).
    pub fn reopen(&mut self) -> io::Result<()> {
        let fresh = LogFile::open_at(
            self.place.clone(),
            self.path.clone(),
            self.max_size,
            self.keep,
        )?;
        *self = fresh;
        Ok(())
    }

    /// Empty the file (`herd flush`).
    pub fn truncate(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.size = 0;
        Ok(())
    }

    /// Remove the file if this LogFile created it and nothing was written
    /// (an app whose start failed leaves no empty files behind).
    pub fn remove_if_unused(&self) {
        if self.created && self.size == 0 {
            let _ = self.place.remove();
        }
    }
}

/// The files one instance writes (or, merged, every instance).
#[derive(Debug)]
struct Files {
    out: LogFile,
    err: LogFile,
    /// Both streams (pm2's `log_file`), when asked for.
    combined: Option<LogFile>,
}

impl Files {
    fn open(paths: &LogPaths, home: &Home, max_size: u64, keep: u32) -> Result<Files, String> {
        let open = |path: &PathBuf| {
            LogFile::open(path, home, max_size, keep).map_err(|e| {
                format!(
                    "cannot open the log file {}: {e}; choose another with --out-file/--error-file/--log",
                    path.display()
                )
            })
        };
        Ok(Files {
            out: open(&paths.out)?,
            err: open(&paths.err)?,
            combined: paths.combined.as_ref().map(open).transpose()?,
        })
    }

    fn each(&mut self) -> impl Iterator<Item = &mut LogFile> {
        [&mut self.out, &mut self.err]
            .into_iter()
            .chain(self.combined.as_mut())
    }
}

/// An app's log files: one set for all its instances, or one per instance;
/// how their lines are written (as they are, stamped, JSON).
pub struct AppLogs {
    /// The files' paths before per-instance numbering.
    paths: LogPaths,
    merged: bool,
    /// Merged: one set, under key 0. Otherwise each instance's, by slot:
    /// instance 0's opened with the app (a path that cannot be opened is
    /// refused at start), the others when their first line comes.
    files: BTreeMap<Slot, Files>,
    home: Home,
    max_size: u64,
    keep: u32,
    format: Format,
    /// A stamped or JSON batch is built here; kept between batches, shrunk
    /// back after an outsized one.
    scratch: Vec<u8>,
    /// Lines lost since a write failed (warned once, and counted until one
    /// succeeds again); `None` while writes succeed.
    lost: Option<u64>,
}

/// What `scratch` is shrunk back to after a batch needed more (one pipe
/// read, stamped, fits).
const SCRATCH_KEEP: usize = 256 << 10;

impl AppLogs {
    /// Open app `id`'s files (instance 0's when they are per instance).
    pub fn open(def: &AppDef, home: &Home, id: u32) -> Result<AppLogs, String> {
        if def.logs.error_file.is_none() {
            rename_old_error_log(def, home);
        }
        let paths = paths(def, home);
        let merged = def.logs.merge_logs;
        let first = Files::open(
            &paths.of_instance(merged, 0),
            home,
            def.logs.max_size,
            def.logs.keep,
        )?;
        let format = match def.logs.log_type {
            LogType::Json => Format::Json(JsonLines {
                app_name: def.spec.name.clone(),
                process_id: id,
                time: match &def.logs.date_format {
                    Some(f) => TimeFormat::moment(f),
                    None => TimeFormat::iso_utc(),
                },
            }),
            LogType::Raw if def.logs.time => {
                Format::Stamped(Stamper::new(def.logs.date_format.as_deref()))
            }
            LogType::Raw => Format::Plain,
        };
        Ok(AppLogs {
            paths,
            merged,
            files: BTreeMap::from([(0, first)]),
            home: home.clone(),
            max_size: def.logs.max_size,
            keep: def.logs.keep,
            format,
            scratch: Vec::new(),
            lost: None,
        })
    }

    /// Copies of the open files' fds, for an in-place upgrade: (instance,
    /// which: 0 out, 1 err, 2 both streams, fd).
    pub fn kept_fds(&self) -> io::Result<Vec<(Slot, u8, std::os::fd::OwnedFd)>> {
        let mut out = Vec::new();
        for (slot, files) in &self.files {
            let each = [Some(&files.out), Some(&files.err), files.combined.as_ref()];
            for (which, file) in each.into_iter().enumerate() {
                if let Some(f) = file {
                    out.push((*slot, which as u8, f.file.try_clone()?.into()));
                }
            }
        }
        Ok(out)
    }

    /// Write to the files a previous image of this process had open
    /// ([`AppLogs::kept_fds`] there), instead of those opened by path.
    pub fn take_over(&mut self, kept: Vec<(Slot, u8, std::os::fd::OwnedFd)>) {
        for (slot, which, fd) in kept {
            if !self.files.contains_key(&slot) {
                let paths = self.paths.of_instance(self.merged, slot);
                match Files::open(&paths, &self.home, self.max_size, self.keep) {
                    Ok(f) => {
                        self.files.insert(slot, f);
                    }
                    Err(_) => continue,
                }
            }
            let Some(files) = self.files.get_mut(&slot) else {
                continue;
            };
            let target = match which {
                0 => Some(&mut files.out),
                1 => Some(&mut files.err),
                _ => files.combined.as_mut(),
            };
            if let Some(target) = target {
                if let Ok(f) = LogFile::kept(
                    target.path.clone(),
                    &self.home,
                    fd,
                    self.max_size,
                    self.keep,
                ) {
                    // The file opening by path created just now is not the log.
                    target.remove_if_unused();
                    *target = f;
                }
            }
        }
    }

    /// Remove the files that opening created, if still empty (the app
    /// never ran: its start failed).
    pub fn remove_if_unused(&mut self) {
        for files in self.files.values_mut() {
            for f in files.each() {
                f.remove_if_unused();
            }
        }
    }

    /// Empty every file (`herd flush`).
    pub fn truncate(&mut self) -> io::Result<()> {
        self.each_file(LogFile::truncate)
    }

    /// Open every file again by its path (after logrotate moved it away).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.each_file(LogFile::reopen)
    }

    /// `f` on every open file; the first error, after trying them all.
    fn each_file(&mut self, f: fn(&mut LogFile) -> io::Result<()>) -> io::Result<()> {
        let mut result = Ok(());
        for files in self.files.values_mut() {
            for file in files.each() {
                let r = f(file);
                if result.is_ok() {
                    result = r;
                }
            }
        }
        result
    }

    /// Write a batch of whole lines that instance `slot` wrote on `stream`,
    /// read at `at`; returns the bytes written (0 if the file cannot be
    /// written: the disk is full, say — the lines are dropped then, with one
    /// warning, rather than stalling the app).
    pub fn write(&mut self, stream: Stream, slot: Slot, lines: &[u8], at: SystemTime) -> usize {
        let key = if self.merged { 0 } else { slot };
        if !self.files.contains_key(&key) {
            let paths = self.paths.of_instance(false, key);
            match Files::open(&paths, &self.home, self.max_size, self.keep) {
                Ok(files) => {
                    self.files.insert(key, files);
                }
                Err(e) => {
                    let n = lines.iter().filter(|&&b| b == b'\n').count() as u64;
                    self.lost_lines(n, format_args!("{e}; its output is lost until it can"));
                    return 0;
                }
            }
        }
        let files = self.files.get_mut(&key).expect("opened above");
        let bytes = self
            .format
            .render(stream, slot, lines, at, &mut self.scratch);
        let file = match stream {
            Stream::Stdout => &mut files.out,
            Stream::Stderr => &mut files.err,
        };
        let mut result = file.write(bytes);
        let mut path = file.path();
        if let (Ok(()), Some(both)) = (&result, &mut files.combined) {
            result = both.write(bytes);
            path = both.path();
        }
        let written = bytes.len();
        let lines_in = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        let failure = result
            .err()
            .map(|e| format!("cannot write {}: {e}", path.display()));
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch.clear();
            self.scratch.shrink_to(SCRATCH_KEEP);
        }
        match failure {
            None => {
                if let Some(n) = self.lost.take() {
                    let name = self.paths.name.as_str();
                    crate::say!(
                        "app {name}: writing {} again; {n} lines of output were lost meanwhile",
                        path.display()
                    );
                }
                written
            }
            Some(e) => {
                self.lost_lines(
                    lines_in,
                    format_args!(
                        "{e}; its output is lost until it can (the app keeps running; free some space)"
                    ),
                );
                0
            }
        }
    }

    /// Count `n` lost lines; say why once, until a write succeeds again.
    fn lost_lines(&mut self, n: u64, why: std::fmt::Arguments) {
        match &mut self.lost {
            Some(lost) => *lost += n,
            None => {
                self.lost = Some(n);
                let name = self.paths.name.as_str();
                crate::say!("app {name}: {why}");
            }
        }
    }
}

/// Where an app's files are, before per-instance numbering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPaths {
    /// The app's name, for messages.
    name: String,
    pub out: PathBuf,
    pub err: PathBuf,
    /// Both streams (pm2's `log_file`).
    pub combined: Option<PathBuf>,
}

impl LogPaths {
    /// The paths instance `slot` writes (`merged`: these).
    fn of_instance(&self, merged: bool, slot: Slot) -> LogPaths {
        if merged {
            return self.clone();
        }
        LogPaths {
            name: self.name.clone(),
            out: instance_log_path(&self.out, slot),
            err: instance_log_path(&self.err, slot),
            combined: self.combined.as_ref().map(|p| instance_log_path(p, slot)),
        }
    }
}

/// Where an app's output goes (per instance, these names numbered by
/// [`instance_log_path`]).
pub fn paths(def: &AppDef, home: &Home) -> LogPaths {
    let dir = home.log_dir();
    let (out, err) = default_names(&def.spec.name);
    LogPaths {
        name: def.spec.name.clone(),
        out: def.logs.out_file.clone().unwrap_or_else(|| dir.join(out)),
        err: def.logs.error_file.clone().unwrap_or_else(|| dir.join(err)),
        combined: def.logs.log_file.clone(),
    }
}

/// The default file names in the home's `logs/`: pm2's `<stem>-out.log`
/// and `<stem>-error.log`, the stem keeping [A-Za-z0-9.-] of the name.
fn default_names(name: &str) -> (String, String) {
    let stem = herd_engine::config::log_file_stem(name);
    (format!("{stem}-out.log"), format!("{stem}-error.log"))
}

/// herd's stderr file was `<stem>-err.log`: rename it (and its rotations)
/// to pm2's `<stem>-error.log` once, if that does not exist yet. A rename
/// that fails leaves both; the app writes the new name either way.
fn rename_old_error_log(def: &AppDef, home: &Home) {
    let stem = herd_engine::config::log_file_stem(&def.spec.name);
    let (_, new) = default_names(&def.spec.name);
    let old = format!("{stem}-err.log");
    let dir = home.logs();
    if !dir.exists(&old) || dir.exists(&new) {
        return;
    }
    if let Err(e) = dir.rename(&old, &new) {
        crate::say!(
            "app {}: cannot rename {old} to {new} (pm2's name): {e}; new lines go to {new}",
            def.spec.name
        );
        return;
    }
    for n in 1..=def.logs.keep.max(1) {
        let (from, to) = (format!("{old}.{n}"), format!("{new}.{n}"));
        if dir.exists(&from) && !dir.exists(&to) {
            let _ = dir.rename(&from, &to);
        }
    }
    crate::say!(
        "app {}: its stderr log {old} is now {new} (pm2's name)",
        def.spec.name
    );
}

/// How a batch of lines goes into the files.
#[derive(Debug, Clone)]
enum Format {
    /// As the app wrote them.
    Plain,
    /// The time before each line.
    Stamped(Stamper),
    /// One JSON object per line.
    Json(JsonLines),
}

impl Format {
    /// The bytes to write for `lines`: `lines` themselves, or built in `scratch`.
    fn render<'a>(
        &self,
        stream: Stream,
        slot: Slot,
        lines: &'a [u8],
        at: SystemTime,
        scratch: &'a mut Vec<u8>,
    ) -> &'a [u8] {
        match self {
            Format::Plain => lines,
            Format::Stamped(s) => {
                s.stamp_into(lines, at, scratch);
                scratch
            }
            Format::Json(j) => {
                j.render(stream, slot, lines, at, scratch);
                scratch
            }
        }
    }
}

/// pm2's `log_type: json`, one object per whole line (pm2 writes one per
/// pipe chunk, so a line can be cut in two objects, or several lines share one):
/// `{"message":"…","timestamp":"…","type":"out","process_id":0,"app_name":"web","instance":1}`.
/// `message` is the line without its newline; `timestamp` ISO 8601 UTC with
/// milliseconds (`2026-12-03T12:08:26.010Z`, as pm2's), or in
/// `log_date_format`; `type` is `out` or `err`; `process_id` is the app's id
/// (as `pm_id` in `herd jlist`) and `instance` the worker's slot.
#[derive(Debug, Clone)]
struct JsonLines {
    app_name: String,
    process_id: u32,
    time: TimeFormat,
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    message: &'a str,
    timestamp: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    process_id: u32,
    app_name: &'a str,
    instance: Slot,
}

impl JsonLines {
    fn render(&self, stream: Stream, slot: Slot, lines: &[u8], at: SystemTime, out: &mut Vec<u8>) {
        out.clear();
        // The time once per batch, formatted on the stack (a custom format
        // too long for it costs one allocation per batch).
        let mut buf = [0u8; 128];
        let mut cursor = io::Cursor::new(&mut buf[..]);
        let fits = self.time.write_to(at, &mut cursor).is_ok();
        let n = cursor.position() as usize;
        let spill;
        let timestamp = if fits {
            std::str::from_utf8(&buf[..n]).unwrap_or_default()
        } else {
            let mut long = Vec::new();
            self.time.write(at, &mut long);
            spill = String::from_utf8_lossy(&long).into_owned();
            spill.as_str()
        };
        let kind = match stream {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        };
        for line in lines.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let message = String::from_utf8_lossy(line);
            let record = JsonLine {
                message: &message,
                timestamp,
                kind,
                process_id: self.process_id,
                app_name: &self.app_name,
                instance: slot,
            };
            // Writing to a Vec fails only on a serializer error, which plain
            // strings and numbers never give.
            let _ = serde_json::to_writer(&mut *out, &record);
            out.push(b'\n');
        }
    }
}

/// Turns pm2's `log_date_format` (moment.js tokens: `YYYY-MM-DD HH:mm:ss.SSS Z`)
/// into a strftime format; text in `[brackets]` is literal.
pub fn strftime_from_moment(format: &str) -> String {
    const TOKENS: &[(&str, &str)] = &[
        ("YYYY", "%Y"),
        ("SSS", "%3f"),
        ("YY", "%y"),
        ("MM", "%m"),
        ("DD", "%d"),
        ("HH", "%H"),
        ("hh", "%I"),
        ("mm", "%M"),
        ("ss", "%S"),
        ("ZZ", "%z"),
        ("M", "%-m"),
        ("D", "%-d"),
        ("H", "%-H"),
        ("h", "%-I"),
        ("A", "%p"),
        ("a", "%P"),
        ("Z", "%:z"),
        ("X", "%s"),
    ];
    let mut out = String::new();
    let mut rest = format;
    'outer: while let Some(c) = rest.chars().next() {
        if c == '[' {
            if let Some(end) = rest.find(']') {
                out.push_str(&rest[1..end].replace('%', "%%"));
                rest = &rest[end + 1..];
                continue;
            }
        }
        for (token, strftime) in TOKENS {
            if let Some(after) = rest.strip_prefix(token) {
                out.push_str(strftime);
                rest = after;
                continue 'outer;
            }
        }
        if c == '%' {
            out.push_str("%%");
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A time format, parsed once: pm2's moment.js tokens in local time, or
/// one of the ISO 8601 forms. Shared by the files and `herd logs --timestamp`.
#[derive(Debug, Clone)]
pub struct TimeFormat {
    items: Vec<Item<'static>>,
    utc: bool,
}

impl TimeFormat {
    /// pm2's `log_date_format` (moment.js tokens), local time.
    pub fn moment(format: &str) -> TimeFormat {
        TimeFormat::strftime(&strftime_from_moment(format), false)
    }

    /// herd's default for `--time`: local, with milliseconds and the offset
    /// (`2026-12-03T13:08:26.010+01:00`).
    pub fn iso_local() -> TimeFormat {
        TimeFormat::strftime("%Y-%m-%dT%H:%M:%S%.3f%:z", false)
    }

    /// JavaScript's `toISOString()`: UTC with milliseconds
    /// (`2026-12-03T12:08:26.010Z`).
    pub fn iso_utc() -> TimeFormat {
        TimeFormat::strftime("%Y-%m-%dT%H:%M:%S%.3fZ", true)
    }

    fn strftime(format: &str, utc: bool) -> TimeFormat {
        match StrftimeItems::new(format).parse_to_owned() {
            Ok(items) => TimeFormat { items, utc },
            Err(_) => TimeFormat::iso_local(),
        }
    }

    /// Write `at` in this format.
    pub fn write_to(&self, at: SystemTime, w: &mut impl Write) -> io::Result<()> {
        if self.utc {
            let t: chrono::DateTime<chrono::Utc> = at.into();
            write!(w, "{}", t.format_with_items(self.items.iter()))
        } else {
            let t: chrono::DateTime<chrono::Local> = at.into();
            write!(w, "{}", t.format_with_items(self.items.iter()))
        }
    }

    /// Append `at` in this format to `out`.
    pub fn write(&self, at: SystemTime, out: &mut Vec<u8>) {
        let start = out.len();
        if self.write_to(at, out).is_err() {
            out.truncate(start);
            let t: chrono::DateTime<chrono::Local> = at.into();
            out.extend_from_slice(t.to_rfc3339().as_bytes());
        }
    }
}

/// Puts the time before each line of a batch of whole lines.
#[derive(Debug, Clone)]
pub struct Stamper {
    format: TimeFormat,
}

impl Stamper {
    /// `format` in pm2's moment.js tokens; `None`: ISO 8601 with milliseconds.
    pub fn new(format: Option<&str>) -> Stamper {
        Stamper {
            format: match format {
                Some(f) => TimeFormat::moment(f),
                None => TimeFormat::iso_local(),
            },
        }
    }

    /// `lines` with `<time>: ` before each line, into `out` (cleared first);
    /// `at` is when herd read them from the worker's pipe (not when they
    /// reach the file).
    pub fn stamp_into(&self, lines: &[u8], at: SystemTime, out: &mut Vec<u8>) {
        out.clear();
        self.format.write(at, out);
        out.extend_from_slice(b": ");
        let prefix = out.len();
        for (i, line) in lines.split_inclusive(|&b| b == b'\n').enumerate() {
            if i > 0 {
                out.extend_from_within(..prefix);
            }
            out.extend_from_slice(line);
        }
        if lines.is_empty() {
            out.clear();
        }
    }

    /// [`Stamper::stamp_into`] a new buffer.
    pub fn stamp(&self, lines: &[u8], at: SystemTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(lines.len() + 32);
        self.stamp_into(lines, at, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moment_formats_become_strftime() {
        assert_eq!(
            strftime_from_moment("YYYY-MM-DD HH:mm:ss"),
            "%Y-%m-%d %H:%M:%S"
        );
        assert_eq!(
            strftime_from_moment("YYYY-MM-DD HH:mm Z"),
            "%Y-%m-%d %H:%M %:z"
        );
        assert_eq!(strftime_from_moment("[at] HH:mm:ss.SSS"), "at %H:%M:%S.%3f");
        assert_eq!(strftime_from_moment("100%"), "100%%");
    }

    #[test]
    fn stamps_each_whole_line() {
        let s = Stamper::new(Some("[T]"));
        assert_eq!(
            s.stamp(b"a\nbb\n", std::time::SystemTime::now()),
            b"T: a\nT: bb\n"
        );
    }

    /// A home in a temporary directory; its `logs/`.
    fn home() -> (tempfile::TempDir, Home) {
        let t = tempfile::tempdir().unwrap();
        let home = Home::open(t.path().join("h")).unwrap();
        (t, home)
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let (_t, home) = home();
        let dir = home.log_dir().to_path_buf();
        let path = dir.join("app-out.log");
        let mut log = LogFile::open(&path, &home, 10, 2).unwrap();
        for i in 0..5 {
            log.write(format!("line {i}\n").as_bytes()).unwrap();
        }
        // Each 7-byte line pushes the previous one out: 4 rotations, 2 kept.
        assert_eq!(fs::read_to_string(&path).unwrap(), "line 4\n");
        assert_eq!(
            fs::read_to_string(dir.join("app-out.log.1")).unwrap(),
            "line 3\n"
        );
        assert_eq!(
            fs::read_to_string(dir.join("app-out.log.2")).unwrap(),
            "line 2\n"
        );
        assert!(!dir.join("app-out.log.3").exists());
    }

    #[test]
    fn a_batch_larger_than_the_limit_is_split_at_lines() {
        // A file the user chose outside the home: by its path.
        let (dir, home) = home();
        let path = dir.path().join("b.log");
        let mut log = LogFile::open(&path, &home, 16, 3).unwrap();
        log.write(b"aaaaaa\nbbbbbb\ncccccc\nthis one is long\n")
            .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "this one is long\n");
        let one = fs::read_to_string(dir.path().join("b.log.1")).unwrap();
        let two = fs::read_to_string(dir.path().join("b.log.2")).unwrap();
        assert_eq!(one, "cccccc\n");
        assert_eq!(two, "aaaaaa\nbbbbbb\n");
    }

    #[test]
    fn reopens_after_the_file_was_moved_away() {
        let (_t, home) = home();
        let path = home.log_dir().join("x.log");
        let mut log = LogFile::open(&path, &home, 0, 5).unwrap();
        log.write(b"before\n").unwrap();
        fs::rename(&path, home.log_dir().join("x.log.old")).unwrap();
        log.reopen().unwrap();
        log.write(b"after\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn log_files_are_private_and_a_planted_link_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let (t, home) = home();
        let path = home.log_dir().join("web-out.log");
        let log = LogFile::open(&path, &home, 0, 5).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(log);
        fs::remove_file(&path).unwrap();
        let target = t.path().join("root-only");
        fs::write(&target, "secret").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = LogFile::open(&path, &home, 0, 5).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "secret");
    }

    #[test]
    fn a_file_created_and_never_written_can_be_removed_but_an_older_one_stays() {
        let (_t, home) = home();
        let fresh = home.log_dir().join("new-out.log");
        LogFile::open(&fresh, &home, 0, 5)
            .unwrap()
            .remove_if_unused();
        assert!(!fresh.exists());
        let old = home.log_dir().join("old-out.log");
        fs::write(&old, "").unwrap();
        LogFile::open(&old, &home, 0, 5).unwrap().remove_if_unused();
        assert!(old.exists());
    }

    fn def(name: &str, logs: herd_protocol::LogSettings) -> AppDef {
        AppDef {
            logs,
            ..AppDef::from(herd_engine::config::AppSpec::new(name, "/bin/true"))
        }
    }

    #[test]
    fn pm2s_names_by_default_and_one_file_per_instance_when_not_merged() {
        let (_t, home) = home();
        let dir = home.log_dir().to_path_buf();
        let at = SystemTime::now();
        let mut merged = AppLogs::open(&def("my app", Default::default()), &home, 3).unwrap();
        merged.write(Stream::Stdout, 0, b"zero\n", at);
        merged.write(Stream::Stdout, 1, b"one\n", at);
        merged.write(Stream::Stderr, 1, b"oops\n", at);
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("my-app-out.log"), "zero\none\n");
        assert_eq!(read("my-app-error.log"), "oops\n");

        let settings = herd_protocol::LogSettings {
            merge_logs: false,
            log_file: Some(dir.join("both.log")),
            ..Default::default()
        };
        let mut split = AppLogs::open(&def("api", settings), &home, 4).unwrap();
        // Instance 0's files exist from the start; instance 1's come with its first line.
        assert!(dir.join("api-out-0.log").exists() && dir.join("api-error-0.log").exists());
        assert!(!dir.join("api-out-1.log").exists());
        split.write(Stream::Stdout, 1, b"a1\nb1\n", at);
        split.write(Stream::Stdout, 0, b"a0\n", at);
        split.write(Stream::Stderr, 1, b"e1\n", at);
        assert_eq!(read("api-out-0.log"), "a0\n");
        assert_eq!(read("api-out-1.log"), "a1\nb1\n");
        assert_eq!(read("api-error-1.log"), "e1\n");
        assert_eq!(read("both-0.log"), "a0\n");
        assert_eq!(read("both-1.log"), "a1\nb1\ne1\n");
        assert!(!dir.join("api-out.log").exists());

        split.truncate().unwrap();
        assert_eq!(read("api-out-1.log"), "");
        assert_eq!(read("both-1.log"), "");
    }

    #[test]
    fn json_lines_carry_pm2s_fields_one_object_per_whole_line() {
        let (_t, home) = home();
        let settings = herd_protocol::LogSettings {
            log_type: LogType::Json,
            ..Default::default()
        };
        let mut logs = AppLogs::open(&def("web", settings), &home, 7).unwrap();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_780_000_000_123);
        let text = "say \"hi\"\ttab\\ \u{1}\r\n\nlast\n";
        let written = logs.write(Stream::Stderr, 2, text.as_bytes(), at);
        let file = fs::read_to_string(home.log_dir().join("web-error.log")).unwrap();
        assert_eq!(written, file.len());
        let lines: Vec<serde_json::Value> = file
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let messages: Vec<&str> = lines
            .iter()
            .map(|l| l["message"].as_str().unwrap())
            .collect();
        assert_eq!(messages, ["say \"hi\"\ttab\\ \u{1}\r", "", "last"]);
        for l in &lines {
            assert_eq!(l["timestamp"], "2026-05-28T20:26:40.123Z");
            assert_eq!(l["type"], "err");
            assert_eq!(l["process_id"], 7);
            assert_eq!(l["app_name"], "web");
            assert_eq!(l["instance"], 2);
        }
        // pm2's key order.
        assert!(file.starts_with(r#"{"message":"say \"hi\"\ttab"#), "{file}");
        assert!(file.lines().next().unwrap().contains(
            r#""timestamp":"2026-05-28T20:26:40.123Z","type":"err","process_id":7,"app_name":"web","instance":2}"#
        ));
        // Bytes that are not UTF-8 are replaced, never break the object.
        logs.write(Stream::Stdout, 0, b"\xff\xfe ok\n", at);
        let out = fs::read_to_string(home.log_dir().join("web-out.log")).unwrap();
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["message"], "\u{fffd}\u{fffd} ok");
        assert_eq!(v["type"], "out");
    }

    #[test]
    fn json_timestamps_follow_log_date_format() {
        let (_t, home) = home();
        let settings = herd_protocol::LogSettings {
            log_type: LogType::Json,
            time: true,
            date_format: Some("[at] YYYY".into()),
            ..Default::default()
        };
        let mut logs = AppLogs::open(&def("web", settings), &home, 0).unwrap();
        logs.write(Stream::Stdout, 0, b"x\n", SystemTime::now());
        let out = fs::read_to_string(home.log_dir().join("web-out.log")).unwrap();
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        let year = chrono::Local::now().format("at %Y").to_string();
        assert_eq!(v["timestamp"], year.as_str());
        assert_eq!(v["message"], "x", "no time prefix inside the message");
    }

    #[test]
    fn an_old_err_log_is_renamed_to_pm2s_error_log_once_with_its_rotations() {
        let (_t, home) = home();
        let dir = home.log_dir().to_path_buf();
        fs::write(dir.join("web-err.log"), "old\n").unwrap();
        fs::write(dir.join("web-err.log.1"), "older\n").unwrap();
        let mut logs = AppLogs::open(&def("web", Default::default()), &home, 0).unwrap();
        logs.write(Stream::Stderr, 0, b"new\n", SystemTime::now());
        assert_eq!(
            fs::read_to_string(dir.join("web-error.log")).unwrap(),
            "old\nnew\n"
        );
        assert_eq!(
            fs::read_to_string(dir.join("web-error.log.1")).unwrap(),
            "older\n"
        );
        assert!(!dir.join("web-err.log").exists() && !dir.join("web-err.log.1").exists());

        // Both there (an old herd ran again meanwhile): neither is touched.
        fs::write(dir.join("web-err.log"), "stray\n").unwrap();
        drop(logs);
        AppLogs::open(&def("web", Default::default()), &home, 0).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("web-err.log")).unwrap(),
            "stray\n"
        );
        assert_eq!(
            fs::read_to_string(dir.join("web-error.log")).unwrap(),
            "old\nnew\n"
        );
    }

    #[test]
    fn stamping_reuses_one_buffer_and_an_outsized_batch_does_not_stay() {
        let (_t, home) = home();
        let settings = herd_protocol::LogSettings {
            time: true,
            date_format: Some("[T]".into()),
            max_size: 0,
            ..Default::default()
        };
        let mut logs = AppLogs::open(&def("web", settings), &home, 0).unwrap();
        let big = "y".repeat(1 << 20) + "\n";
        logs.write(Stream::Stdout, 0, big.as_bytes(), SystemTime::now());
        assert!(logs.scratch.capacity() <= SCRATCH_KEEP);
        logs.write(Stream::Stdout, 0, b"a\nb\n", SystemTime::now());
        let out = fs::read_to_string(home.log_dir().join("web-out.log")).unwrap();
        assert!(
            out.ends_with("T: a\nT: b\n"),
            "{:?}",
            &out[out.len() - 20..]
        );
        assert_eq!(out.len(), 3 + big.len() + 10);
    }
}
