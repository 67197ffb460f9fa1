//! Following a log file the daemon writes, as `tail -F` does: the last lines
//! first, then whole lines as they are appended, across rotation (a new file
//! at the path) and truncation (`herd flush`). Shared by `herd logs` and
//! `herd monit`; the CLI reads the files itself, so a slow reader never costs
//! the daemon memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use herd_protocol::{instance_log_path, AppInfo};

/// A file being followed.
pub struct Tail {
    pub app: String,
    pub stream: &'static str,
    /// The instance whose own file this is (an app with `merge_logs: false`).
    pub instance: Option<usize>,
    pub path: PathBuf,
    file: Option<File>,
    inode: u64,
    offset: u64,
    partial: Vec<u8>,
    /// Skipped ahead: drop bytes up to the next line start.
    resync: bool,
}

impl Tail {
    pub fn new(app: &str, stream: &'static str, path: PathBuf) -> Tail {
        Tail {
            app: app.to_string(),
            stream,
            instance: None,
            path,
            file: None,
            inode: 0,
            offset: 0,
            partial: Vec::new(),
            resync: false,
        }
    }

    /// The files of `app` to follow, stdout's (`out`) and stderr's (`err`):
    /// one each, or one each per instance when its logs are not merged.
    pub fn of_app(app: &AppInfo, out: bool, err: bool) -> Vec<Tail> {
        let streams = [("out", out, &app.out_log), ("err", err, &app.err_log)];
        let mut tails = Vec::new();
        if app.merge_logs {
            for (stream, wanted, path) in streams {
                if wanted {
                    tails.push(Tail::new(&app.name, stream, path.clone()));
                }
            }
            return tails;
        }
        for slot in 0..app.instances {
            for (stream, wanted, path) in streams {
                if wanted {
                    let mut t = Tail::new(&app.name, stream, instance_log_path(path, slot));
                    t.instance = Some(slot);
                    tails.push(t);
                }
            }
        }
        tails
    }

    /// The last `n` whole lines; following starts after them.
    pub fn last_lines(&mut self, n: usize) -> Vec<Vec<u8>> {
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        let Ok(meta) = file.metadata() else {
            return Vec::new();
        };
        let len = meta.len();
        self.inode = meta.ino();
        self.offset = len;
        // Read backwards in blocks until n+1 newlines are in hand.
        let mut start = len;
        let mut buf: Vec<u8> = Vec::new();
        while start > 0 && buf.iter().filter(|&&b| b == b'\n').count() <= n {
            let step = start.min(64 * 1024);
            start -= step;
            let mut block = vec![0u8; step as usize];
            if file.seek(SeekFrom::Start(start)).is_err() || file.read_exact(&mut block).is_err() {
                break;
            }
            block.extend_from_slice(&buf);
            buf = block;
        }
        self.file = Some(file);
        let mut lines: Vec<Vec<u8>> = buf
            .split_inclusive(|&b| b == b'\n')
            .filter(|l| l.ends_with(b"\n"))
            .map(|l| l.to_vec())
            .collect();
        if start > 0 && !lines.is_empty() {
            lines.remove(0); // possibly cut at the block edge
        }
        let skip = lines.len().saturating_sub(n);
        lines.split_off(skip)
    }

    /// Whole lines written since the last call; follows rotation (a new
    /// file at the path) and truncation (`herd flush`).
    pub fn read_new(&mut self) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        if let Ok(meta) = std::fs::metadata(&self.path) {
            let replaced = meta.ino() != self.inode;
            if replaced || meta.len() < self.offset {
                // Finish the old file first, then start the new one from its beginning.
                if !replaced {
                    self.partial.clear();
                } else {
                    self.drain(&mut lines);
                }
                self.file = File::open(&self.path).ok();
                self.inode = meta.ino();
                self.offset = 0;
                self.resync = false;
            }
        }
        self.drain(&mut lines);
        lines
    }

    fn drain(&mut self, lines: &mut Vec<Vec<u8>>) {
        let Some(file) = &mut self.file else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut chunk = Vec::new();
        if let Ok(n) = file.take(1 << 20).read_to_end(&mut chunk) {
            self.offset += n as u64;
        }
        self.partial.extend_from_slice(&chunk);
        if self.resync {
            // After skipping ahead: the first line is a tail end, dropped.
            match self.partial.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.drain(..=i);
                    self.resync = false;
                }
                None => {
                    self.partial.clear();
                    return;
                }
            }
        }
        // One pass; each line its own right-sized copy.
        let mut start = 0;
        while let Some(i) = self.partial[start..].iter().position(|&b| b == b'\n') {
            lines.push(self.partial[start..start + i + 1].to_vec());
            start += i + 1;
        }
        self.partial.drain(..start);
    }

    /// Skip ahead when more than `keep` bytes are waiting unread (a flood):
    /// a dashboard wants the latest lines, not a backlog. The line cut by
    /// the jump is dropped.
    pub fn skip_to_recent(&mut self, keep: u64) {
        let Some(file) = &self.file else {
            return;
        };
        let Ok(meta) = file.metadata() else {
            return;
        };
        if meta.ino() == self.inode && meta.len() > self.offset.saturating_add(keep) {
            self.offset = meta.len() - keep;
            self.partial.clear();
            self.resync = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn whole_lines_then_new_ones_then_a_skip_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app-out.log");
        append(&path, "one\ntwo\nthree\n");
        let mut t = Tail::new("app", "out", path.clone());
        assert_eq!(
            t.last_lines(2),
            vec![b"two\n".to_vec(), b"three\n".to_vec()]
        );
        append(&path, "four\nfi");
        assert_eq!(t.read_new(), vec![b"four\n".to_vec()]);
        append(&path, "ve\n");
        let five = t.read_new();
        assert_eq!(five, vec![b"five\n".to_vec()]);
        assert!(five[0].capacity() < 64, "a line keeps a right-sized buffer");

        // A backlog over the limit: only whole lines from near the end.
        let backlog: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        append(&path, &backlog);
        t.skip_to_recent(100);
        let recent = t.read_new();
        assert!(!recent.is_empty() && recent.len() < 20, "{}", recent.len());
        assert_eq!(recent.last().unwrap(), b"line 999\n");
        assert!(recent.iter().all(|l| l.starts_with(b"line ")), "{recent:?}");

        // Truncation (herd flush): from the start again.
        std::fs::write(&path, "").unwrap();
        assert!(t.read_new().is_empty());
        append(&path, "after\n");
        assert_eq!(t.read_new(), vec![b"after\n".to_vec()]);
    }
}
