//! An app's log files ([`AppLogs`]): whole lines appended, an optional timestamp before
//! each, rotation by size (`name-out.log` → `.1` → `.2` …), reopening for
//! logrotate (SIGUSR1) and truncation (`herd flush`).
//!
//! The engine hands over complete lines only (a line split across pipe reads
//! is joined before it gets here), so a timestamp never lands mid-line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use herd_engine::supervisor::Stream;
use herd_protocol::AppDef;

/// One log file being appended to.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: u32,
}

impl LogFile {
    /// Open (create) `path` for appending; `max_size` 0 never rotates.
    pub fn open(path: &Path, max_size: u64, keep: u32) -> io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            keep,
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
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let from = numbered(n);
            if from.exists() {
                fs::rename(&from, numbered(n + 1))?;
            }
        }
        fs::rename(&self.path, numbered(1))?;
        self.reopen()
    }

    /// Open the path again (after logrotate moved the file away).
    pub fn reopen(&mut self) -> io::Result<()> {
        let fresh = LogFile::open(&self.path, self.max_size, self.keep)?;
        *self = fresh;
        Ok(())
    }

    /// Empty the file (`herd flush`).
    pub fn truncate(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.size = 0;
        Ok(())
    }
}

/// An app's two log files (stdout, stderr), with its timestamp setting.
pub struct AppLogs {
    pub out: LogFile,
    pub err: LogFile,
    stamper: Option<Stamper>,
    /// The last write failed (warned once until one succeeds).
    failed: bool,
}

impl AppLogs {
    pub fn open(def: &AppDef, log_dir: &Path) -> Result<AppLogs, String> {
        let (out, err) = paths(def, log_dir);
        let open = |path: &PathBuf| {
            LogFile::open(path, def.logs.max_size, def.logs.keep).map_err(|e| {
                format!(
                    "cannot open the log file {}: {e}; choose another with --out-file/--error-file",
                    path.display()
                )
            })
        };
        Ok(AppLogs {
            out: open(&out)?,
            err: open(&err)?,
            stamper: def
                .logs
                .time
                .then(|| Stamper::new(def.logs.date_format.as_deref())),
            failed: false,
        })
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
        match file.write(bytes) {
            Ok(()) => {
                self.failed = false;
                return bytes.len();
            }
            Err(e) if !self.failed => {
                self.failed = true;
                crate::say!(
                    "app {app}: cannot write {}: {e}; its output is lost until it can",
                    file.path().display()
                );
            }
            Err(_) => {}
        }
        0
    }
}

/// Where an app's stdout and stderr go (`log_dir`: `$HERD_HOME/logs`).
pub fn paths(def: &AppDef, log_dir: &Path) -> (PathBuf, PathBuf) {
    let name = &def.spec.name;
    let dir = log_dir;
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

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app-out.log");
        let mut log = LogFile::open(&path, 10, 2).unwrap();
        for i in 0..5 {
            log.write(format!("line {i}\n").as_bytes()).unwrap();
        }
        // Each 7-byte line pushes the previous one out: 4 rotations, 2 kept.
        assert_eq!(fs::read_to_string(&path).unwrap(), "line 4\n");
        assert_eq!(
            fs::read_to_string(dir.path().join("app-out.log.1")).unwrap(),
            "line 3\n"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("app-out.log.2")).unwrap(),
            "line 2\n"
        );
        assert!(!dir.path().join("app-out.log.3").exists());
    }

    #[test]
    fn a_batch_larger_than_the_limit_is_split_at_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.log");
        let mut log = LogFile::open(&path, 16, 3).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut log = LogFile::open(&path, 0, 5).unwrap();
        log.write(b"before\n").unwrap();
        fs::rename(&path, dir.path().join("x.log.old")).unwrap();
        log.reopen().unwrap();
        log.write(b"after\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "after\n");
    }
}
