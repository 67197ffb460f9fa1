//! pm2's JavaScript files, evaluated by node as pm2 does (`require`, or
//! `import` for ES modules; a `.json` file that is no strict JSON as a JS
//! expression, through `vm`), printed back as JSON.
//!
//! Node runs in a process group of its own, and the evaluation ends at
//! [`LIMIT`] whatever the file does: when node is not done by then, or has
//! exited while a process it started still holds its output open, that whole
//! group is killed (a config file is read, it does not start services).

use std::io::{ErrorKind, Read};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::UsageError;

/// Longest a config file may take to evaluate.
pub const LIMIT: Duration = Duration::from_secs(30);

/// How long processes the file started may keep node's output open after
/// node exited.
const LINGER: Duration = Duration::from_millis(200);

/// The most output node may print (the file's apps are small).
const MAX_OUTPUT: usize = 64 << 20;

/// Marks the JSON in node's output, in case the file prints something itself.
const MARK: &str = "\u{1}herd-config\u{1}";

const MODULE_LOADER: &str = r#"
const file = require('path').resolve(process.argv[process.argv.length - 1]);
const { pathToFileURL } = require('url');
const load = async () => {
  if (file.endsWith('.mjs')) return import(pathToFileURL(file).href);
  try {
    return require(file);
  } catch (e) {
    if (e && e.code === 'ERR_REQUIRE_ESM') return import(pathToFileURL(file).href);
    throw e;
  }
};
load().then((m) => {
  if (m && (m[Symbol.toStringTag] === 'Module' || m.__esModule) && 'default' in m) m = m.default;
  process.stdout.write('\u0001herd-config\u0001' + JSON.stringify(m === undefined ? null : m) + '\n');
  process.exit(0);
}, (e) => {
  process.stderr.write(String((e && e.stack) || e) + '\n');
  process.exit(1);
});
"#;

/// pm2's `.json`: `vm.runInThisContext('(' + text + ')')`.
const EXPRESSION_LOADER: &str = r#"
const file = require('path').resolve(process.argv[process.argv.length - 1]);
try {
  const text = require('fs').readFileSync(file, 'utf8');
  const m = require('vm').runInThisContext('(' + text + ')', { filename: file, timeout: 1000 });
  process.stdout.write('\u0001herd-config\u0001' + JSON.stringify(m === undefined ? null : m) + '\n');
  process.exit(0);
} catch (e) {
  process.stderr.write(String((e && e.stack) || e) + '\n');
  process.exit(1);
}
"#;

/// What the file is to node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A module (`.config.js`, `.cjs`, `.mjs`).
    Module,
    /// A JS expression (pm2's `.json`).
    Expression,
}

/// The file's value as JSON.
pub fn evaluate(
    path: &Path,
    source: Source,
    warnings: &mut Vec<String>,
) -> Result<String, UsageError> {
    evaluate_with("node", path, source, LIMIT, warnings)
}

pub fn evaluate_with(
    node: &str,
    path: &Path,
    source: Source,
    limit: Duration,
    warnings: &mut Vec<String>,
) -> Result<String, UsageError> {
    let label = path.display();
    if !path.is_file() {
        return Err(UsageError(format!("cannot read {label}: no such file")));
    }
    let mut child = Command::new(node)
        .arg("-e")
        .arg(match source {
            Source::Module => MODULE_LOADER,
            Source::Expression => EXPRESSION_LOADER,
        })
        .arg("--")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                UsageError(format!(
                    "cannot read {label}: it is JavaScript, and reading it needs Node.js (`node`), which is not in PATH: install Node.js, or write the apps in a .json, .yaml or herd.toml file"
                ))
            } else {
                UsageError(format!("cannot read {label}: cannot start node: {e}"))
            }
        })?;
    let group = Pid::from_raw(child.id() as i32);
    let result = collect(&mut child, limit);
    // Whatever happened, nothing the evaluation started outlives it.
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
    let Collected {
        status,
        out,
        err,
        lingered,
    } = match result {
        Ok(c) => c,
        Err(Ended::Limit) => {
            return Err(UsageError(format!(
                "cannot read {label}: node did not finish evaluating it within {}s, so herd killed it and every process it started (its process group): does the file start a server, or wait for input?",
                limit.as_secs()
            )))
        }
        Err(Ended::Io(e)) => {
            return Err(UsageError(format!(
                "cannot read {label}: reading node's output: {e}"
            )))
        }
        Err(Ended::TooLong) => {
            return Err(UsageError(format!(
                "cannot read {label}: node printed more than {} MiB evaluating it",
                MAX_OUTPUT >> 20
            )))
        }
    };
    let out = String::from_utf8_lossy(&out).into_owned();
    let err = String::from_utf8_lossy(&err).into_owned();
    let err = err.trim();
    if lingered {
        warnings.push(format!(
            "{label}: evaluating it started processes that kept running after node was done; herd stopped them (its process group)"
        ));
    }
    if !status.success() {
        // Node's own frames (and our loader's) say nothing about the file.
        let text: Vec<&str> = err
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !(l.starts_with("at ") && (l.contains("node:internal") || l.contains("[eval]")))
            })
            .collect();
        return Err(UsageError(format!(
            "cannot read {label}: node failed to evaluate it ({status}); fix the file:\n{}",
            if text.is_empty() {
                "(no output)".to_string()
            } else {
                text.join("\n")
            }
        )));
    }
    if !err.is_empty() {
        warnings.push(format!("{label}: node printed: {err}"));
    }
    match out.rfind(MARK) {
        Some(i) => Ok(out[i + MARK.len()..].trim_end().to_string()),
        None => Err(UsageError(format!(
            "cannot read {label}: node printed no configuration"
        ))),
    }
}

struct Collected {
    status: ExitStatus,
    out: Vec<u8>,
    err: Vec<u8>,
    /// Processes started by the file held the output after node exited.
    lingered: bool,
}

enum Ended {
    Limit,
    TooLong,
    Io(std::io::Error),
}

/// Reads node's stdout and stderr until both are closed, and waits for it,
/// within `limit`: never blocked by a process that inherited the pipes.
fn collect(child: &mut Child, limit: Duration) -> Result<Collected, Ended> {
    let deadline = Instant::now() + limit;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    let mut status: Option<(ExitStatus, Instant)> = None;
    let mut lingered = false;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if status.is_none() {
            if let Some(s) = child.try_wait().map_err(Ended::Io)? {
                status = Some((s, Instant::now()));
            }
        }
        if !out_open && !err_open {
            if let Some((s, _)) = status {
                return Ok(Collected {
                    status: s,
                    out,
                    err,
                    lingered,
                });
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Ended::Limit);
        }
        if let Some((s, exited)) = status {
            // Node is done; whoever still holds its output is not.
            if now >= exited + LINGER {
                lingered = true;
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                drain(&mut stdout, &mut out, &mut out_open, &mut buf);
                drain(&mut stderr, &mut err, &mut err_open, &mut buf);
                return Ok(Collected {
                    status: s,
                    out,
                    err,
                    lingered,
                });
            }
        }
        let wait = (deadline - now).min(Duration::from_millis(20));
        let mut fds = Vec::with_capacity(2);
        if out_open {
            fds.push(PollFd::new(stdout.as_fd(), PollFlags::POLLIN));
        }
        if err_open {
            fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLIN));
        }
        let ready: Vec<bool> = if fds.is_empty() {
            std::thread::sleep(wait);
            Vec::new()
        } else {
            match poll(
                &mut fds,
                PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO),
            ) {
                Ok(_) => fds
                    .iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Ended::Io(e.into())),
            }
        };
        let mut i = 0;
        if out_open {
            if ready[i] {
                read_once(&mut stdout, &mut out, &mut out_open, &mut buf)?;
            }
            i += 1;
        }
        if err_open && ready[i] {
            read_once(&mut stderr, &mut err, &mut err_open, &mut buf)?;
        }
    }
}

/// One read from a pipe poll said is ready.
fn read_once(
    pipe: &mut impl Read,
    to: &mut Vec<u8>,
    open: &mut bool,
    buf: &mut [u8],
) -> Result<(), Ended> {
    match pipe.read(buf) {
        Ok(0) => *open = false,
        Ok(n) => {
            if to.len() + n > MAX_OUTPUT {
                return Err(Ended::TooLong);
            }
            to.extend_from_slice(&buf[..n]);
        }
        Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => return Err(Ended::Io(e)),
    }
    Ok(())
}

/// What is left in a pipe whose writers were just killed, for a moment at most.
fn drain(pipe: &mut (impl Read + AsFd), to: &mut Vec<u8>, open: &mut bool, buf: &mut [u8]) {
    let until = Instant::now() + Duration::from_millis(500);
    while *open && Instant::now() < until && to.len() < MAX_OUTPUT {
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(50u16)) {
            Ok(0) => {}
            Ok(_) => {
                if read_once(pipe, to, open, buf).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}
