//! An app's log files ([`AppLogs`]): whole lines appended, an optional timestamp before
//! each, rotation by size (`name-out.log` → `.1` → `.2` …), reopening for
//! logrotate (SIGUSR1) and truncation (`herd flush`).
//!
//! A file in the home (the default `logs/NAME-out.log`) is opened, rotated
//! and removed through the home's checked directory ([`herd_home::Dir`]):
//! never through a link, created 0600. A file the user chose elsewhere
//! (`--out-file`) is opened by its path, created 0600.
//!
//! The engine hands over complete lines only (a line split across pipe reads
//! is joined before it gets here), so a timestamp never lands mid-line.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use herd_engine::supervisor::Stream;
use herd_home::{Access, Dir};
use herd_protocol::AppDef;

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
            self.file.write_all(&rest[..take])?;
            self.size += take as u64;
            rest = &rest[take..];
        }
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

/// An app's two log files (stdout, stderr), with its timestamp setting, and
/// the file that gets both when one is asked for (pm2's `--log`).
pub struct AppLogs {
    pub out: LogFile,
    pub err: LogFile,
    pub combined: Option<LogFile>,
    stamper: Option<Stamper>,
    /// The last write failed (warned once until one succeeds).
    failed: bool,
}

impl AppLogs {
    pub fn open(def: &AppDef, home: &Home) -> Result<AppLogs, String> {
        let (out, err) = paths(def, home);
        let open = |path: &PathBuf| {
            LogFile::open(path, home, def.logs.max_size, def.logs.keep).map_err(|e| {
                format!(
                    "cannot open the log file {}: {e}; choose another with --out-file/--error-file",
                    path.display()
                )
            })
        };
        Ok(AppLogs {
            out: open(&out)?,
            err: open(&err)?,
            combined: def.logs.log_file.as_ref().map(open).transpose()?,
            stamper: def
                .logs
                .time
                .then(|| Stamper::new(def.logs.date_format.as_deref())),
            failed: false,
        })
    }

    /// Remove the files that opening created, if still empty (the app
    /// never ran: its start failed).
    pub fn remove_if_unused(&self) {
        self.out.remove_if_unused();
        self.err.remove_if_unused();
    }

    /// Write a batch of whole lines read at `at`; returns the bytes written
    /// (0 if the file cannot be written: the disk is full, say — the lines
    /// are dropped then, with one warning, rather than stalling the app).
    pub fn write(&mut self, stream: Stream, lines: &[u8], at: SystemTime, app: &str) -> usize {
        let stamped;
        let bytes = match &self.stamper {
            Some(s) => {
                stamped = s.stamp(lines, at);
                &stamped[..]
            }
            None => lines,
        };
        let file = match stream {
            Stream::Stdout => &mut self.out,
            Stream::Stderr => &mut self.err,
        };
        let mut result = file.write(bytes);
        let mut path = file.path();
        if let (Ok(()), Some(both)) = (&result, &mut self.combined) {
            result = both.write(bytes);
            path = both.path();
        }
        match result {
            Ok(()) => {
                self.failed = false;
                return bytes.len();
            }
            Err(e) if !self.failed => {
                self.failed = true;
                crate::say!(
                    "app {app}: cannot write {}: {e}; its output is lost until it can",
                    path.display()
                );
            }
            Err(_) => {}
        }
        0
    }
}

/// Where an app's stdout and stderr go.
pub fn paths(def: &AppDef, home: &Home) -> (PathBuf, PathBuf) {
    // pm2's rule: any name is fine, its file name keeps [A-Za-z0-9.-] only.
    let name = herd_engine::config::log_file_stem(&def.spec.name);
    let dir = home.log_dir();
    (
        def.logs
            .out_file
            .clone()
            .unwrap_or_else(|| dir.join(format!("{name}-out.log"))),
        def.logs
            .error_file
            .clone()
            .unwrap_or_else(|| dir.join(format!("{name}-err.log"))),
    )
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

/// Puts the time before each line of a batch of whole lines.
#[derive(Debug, Clone)]
pub struct Stamper {
    strftime: String,
}

impl Stamper {
    /// `format` in pm2's moment.js tokens; `None`: ISO 8601 with milliseconds.
    pub fn new(format: Option<&str>) -> Stamper {
        Stamper {
            strftime: match format {
                Some(f) => strftime_from_moment(f),
                None => "%Y-%m-%dT%H:%M:%S%.3f%:z".to_string(),
            },
        }
    }

    /// `lines` with `<time>: ` before each line; `at` is when herd read them
    /// from the worker's pipe (not when they reach the file).
    pub fn stamp(&self, lines: &[u8], at: std::time::SystemTime) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut prefix = String::new();
        let now: chrono::DateTime<chrono::Local> = at.into();
        if write!(prefix, "{}: ", now.format(&self.strftime)).is_err() {
            prefix = format!("{}: ", now.to_rfc3339());
        }
        let mut out = Vec::with_capacity(lines.len() + 32);
        for line in lines.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(line);
        }
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
}
