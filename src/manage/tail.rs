//! Following a log file the daemon writes, as `tail -F` does: the last lines
//! first, then whole lines as they are appended, across rotation (a new file
//! at the path) and truncation (`herd flush`). Shared by `herd logs` and
//! `herd monit`; the CLI reads the files itself, so a slow reader never costs
//! the daemon memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// A file being followed.
pub struct Tail {
    pub app: String,
    pub stream: &'static str,
    pub path: PathBuf,
    file: Option<File>,
    inode: u64,
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    pub fn new(app: &str, stream: &'static str, path: PathBuf) -> Tail {
        Tail {
            app: app.to_string(),
            stream,
            path,
            file: None,
            inode: 0,
            offset: 0,
            partial: Vec::new(),
        }
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
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let rest = self.partial.split_off(i + 1);
            lines.push(std::mem::replace(&mut self.partial, rest));
        }
    }
}
