//! The output of a process under test, captured line by line: one reader
//! thread per stream echoes each line to the test's stderr (`  tag.out| …`),
//! keeps it, lets a tracker note the pids it names (for cleanup), and wakes
//! whoever waits for a line. Also the common ending of such a process.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{match_pat, Stream};

/// Everything read so far, and the pids the lines named.
#[derive(Default)]
pub(crate) struct Lines {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub stdout_eof: bool,
    pub stderr_eof: bool,
    /// Worker pids (each leads its own process group).
    pub groups: BTreeSet<i32>,
    /// Grandchildren the workers announced.
    pub children: BTreeSet<i32>,
}

impl Lines {
    pub fn of(&self, which: Stream) -> &Vec<String> {
        match which {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    fn eof(&self, which: Stream) -> bool {
        match which {
            Stream::Stdout => self.stdout_eof,
            Stream::Stderr => self.stderr_eof,
        }
    }
}

/// Called with each line (of either stream) as it arrives.
pub(crate) type Tracker = fn(&str, &mut Lines);

type Shared = Arc<(Mutex<Lines>, Condvar)>;

pub(crate) struct Capture {
    out: Shared,
    readers: Vec<JoinHandle<()>>,
}

impl Capture {
    /// Take `child`'s piped stdout and stderr and read them.
    pub fn start(child: &mut Child, tag: &'static str, track: Tracker) -> Capture {
        let out: Shared = Arc::default();
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let readers = vec![
            reader(stdout, out.clone(), Stream::Stdout, tag, track),
            reader(stderr, out.clone(), Stream::Stderr, tag, track),
        ];
        Capture { out, readers }
    }

    pub fn with<R>(&self, f: impl FnOnce(&Lines) -> R) -> R {
        f(&self.out.0.lock().unwrap())
    }

    pub fn lines(&self, which: Stream) -> Vec<String> {
        self.with(|l| l.of(which).clone())
    }

    pub fn mark(&self, which: Stream) -> usize {
        self.with(|l| l.of(which).len())
    }

    /// Wait for a line matching `pattern` at or after line `from` among the
    /// lines `eligible` accepts: (index, captures). `None` at the deadline
    /// or when the stream ends.
    pub fn wait_matching(
        &self,
        which: Stream,
        from: usize,
        pattern: &str,
        timeout: Duration,
        eligible: impl Fn(&str) -> bool,
    ) -> Option<(usize, Vec<String>)> {
        self.wait_for(which, from, timeout, |l| {
            eligible(l).then(|| match_pat(pattern, l)).flatten()
        })
    }

    /// Wait for a line at or after line `from` that `matches` (its captures):
    /// (index, captures). `None` at the deadline or when the stream ends.
    pub fn wait_for(
        &self,
        which: Stream,
        from: usize,
        timeout: Duration,
        matches: impl Fn(&str) -> Option<Vec<String>>,
    ) -> Option<(usize, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.out;
        let mut o = m.lock().unwrap();
        let mut next = from;
        loop {
            let lines = o.of(which);
            while next < lines.len() {
                if let Some(c) = matches(&lines[next]) {
                    return Some((next, c));
                }
                next += 1;
            }
            let now = Instant::now();
            if o.eof(which) || now >= deadline {
                return None;
            }
            o = cv.wait_timeout(o, deadline - now).unwrap().0;
        }
    }

    /// Wait until both streams hit EOF (or the timeout: something, e.g. a
    /// leaked grandchild, may hold them open).
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.out;
        let mut o = m.lock().unwrap();
        while !(o.stdout_eof && o.stderr_eof) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            o = cv.wait_timeout(o, deadline - now).unwrap().0;
        }
        true
    }

    /// After the process is gone: give the readers a moment to see EOF and
    /// join those that have ended.
    pub fn finish(&mut self) {
        self.drain(Duration::from_secs(1));
        for r in self.readers.drain(..) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }
}

fn reader(
    r: impl Read + Send + 'static,
    out: Shared,
    which: Stream,
    tag: &'static str,
    track: Tracker,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut br = BufReader::new(r);
        let mut buf = Vec::new();
        let t = match which {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        };
        loop {
            buf.clear();
            match br.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    eprintln!("  {tag}.{t}| {line}");
                    let (m, cv) = &*out;
                    let mut o = m.lock().unwrap();
                    track(&line, &mut o);
                    match which {
                        Stream::Stdout => o.stdout.push(line),
                        Stream::Stderr => o.stderr.push(line),
                    }
                    cv.notify_all();
                }
            }
        }
        let (m, cv) = &*out;
        let mut o = m.lock().unwrap();
        match which {
            Stream::Stdout => o.stdout_eof = true,
            Stream::Stderr => o.stderr_eof = true,
        }
        cv.notify_all();
    })
}

/// Its exit status, once it has exited (reaped once, remembered).
pub(crate) fn try_status(child: &mut Child, status: &mut Option<ExitStatus>) -> Option<ExitStatus> {
    if status.is_none() {
        *status = child.try_wait().expect("try_wait");
    }
    *status
}

/// End a process under test that is still running: SIGTERM, up to 3 s to
/// exit, then SIGKILL.
pub(crate) fn terminate(child: &mut Child, status: &mut Option<ExitStatus>) {
    if try_status(child, status).is_some() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while try_status(child, status).is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    if try_status(child, status).is_none() {
        let _ = child.kill();
        *status = child.wait().ok();
    }
}
