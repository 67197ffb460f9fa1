//! `herd logs`: the last lines of apps' log files, then new lines as they
//! are written (as pm2 does, streaming by default). The CLI reads the files
//! itself: the daemon only says where they are, so a slow reader never
//! costs the daemon memory. Rotation and truncation are followed.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use herd_protocol::{Request, Response};

use super::client;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// An app's name, its id, or `all` (the default).
    #[arg(value_name = "APP|ID|all", default_value = "all")]
    app: String,
    /// How many past lines to show from each file.
    #[arg(long, default_value_t = 15, value_name = "N")]
    lines: usize,
    /// Print the past lines and exit instead of following.
    #[arg(long)]
    nostream: bool,
    /// Only the stdout logs.
    #[arg(long, conflicts_with = "err")]
    out: bool,
    /// Only the stderr logs.
    #[arg(long)]
    err: bool,
    /// One JSON object per line: {"app", "stream", "message"}.
    #[arg(long)]
    json: bool,
}

/// A file being followed.
struct Tail {
    app: String,
    stream: &'static str,
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    offset: u64,
    partial: Vec<u8>,
}

pub fn main(args: LogsArgs) -> anyhow::Result<i32> {
    let Response::Apps { apps } = client::ask(Request::List)? else {
        anyhow::bail!("the daemon answered list with something else");
    };
    let chosen: Vec<_> = apps
        .into_iter()
        .filter(|a| args.app == "all" || a.name == args.app || a.id.to_string() == args.app)
        .collect();
    if chosen.is_empty() && args.app != "all" {
        return Err(crate::UsageError(format!(
            "no app named '{}': `herd list` shows the apps and their ids",
            args.app
        ))
        .into());
    }
    let mut tails = Vec::new();
    for app in &chosen {
        if !args.err {
            tails.push(Tail::new(&app.name, "out", app.out_log.clone()));
        }
        if !args.out {
            tails.push(Tail::new(&app.name, "err", app.err_log.clone()));
        }
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for t in &mut tails {
        if !args.json {
            writeln!(out, "==> {} ({} lines) <==", t.path.display(), args.lines)?;
        }
        for line in t.last_lines(args.lines) {
            print_line(&mut out, t, &line, args.json)?;
        }
    }
    out.flush()?;
    if args.nostream {
        return Ok(0);
    }
    loop {
        let mut any = false;
        for t in &mut tails {
            for line in t.read_new() {
                any = true;
                print_line(&mut out, t, &line, args.json)?;
            }
        }
        if any {
            // A closed pipe (`herd logs | head`) ends us quietly.
            if out.flush().is_err() {
                return Ok(0);
            }
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn print_line(out: &mut impl Write, t: &Tail, line: &[u8], json: bool) -> io::Result<()> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\n');
    let r = if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "app": t.app, "stream": t.stream, "message": text })
        )
    } else {
        writeln!(out, "{}|{} | {text}", t.app, t.stream)
    };
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r,
    }
}

impl Tail {
    fn new(app: &str, stream: &'static str, path: PathBuf) -> Tail {
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
    fn last_lines(&mut self, n: usize) -> Vec<Vec<u8>> {
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
    fn read_new(&mut self) -> Vec<Vec<u8>> {
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
