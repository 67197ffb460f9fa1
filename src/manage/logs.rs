//! `herd logs`: the last lines of apps' log files, then new lines as they
//! are written (as pm2 does, streaming by default). The CLI reads the files
//! itself: the daemon only says where they are, so a slow reader never
//! costs the daemon memory. Rotation and truncation are followed; an app
//! whose instances write files of their own (`merge_logs: false`) has each
//! instance's followed, labelled `APP:N`.
//!
//! Each line is printed as `APP|out | line` (or `err`), or as it is
//! (`--raw`: stdout's lines on stdout, stderr's on stderr, as pm2 prints
//! them), or as one JSON object (`--json`); `--timestamp` puts the time it is
//! printed before it, in pm2's tokens.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use clap::Args;
use herd_protocol::{Request, Response};
use herd_supervisor::logs::TimeFormat;

use super::client;
use super::tail::Tail;

/// pm2's format for `logs --timestamp` without one.
const PM2_TIMESTAMP: &str = "YYYY-MM-DD-HH:mm:ss";

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// An app's name, its id, or `all` (the default).
    #[arg(value_name = "APP|ID|all", default_value = "all")]
    app: String,
    /// How many past lines to show from each file.
    #[arg(long, default_value_t = 15, value_parser = crate::options::count::<usize>, value_name = "N")]
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
    /// One JSON object per line: {"app", "stream", "message", "timestamp"} ("instance" too for
    /// an app whose instances have files of their own); "timestamp" is when herd logs read the
    /// line (ISO 8601 UTC), null for the past lines printed first.
    #[arg(long, conflicts_with_all = ["raw", "timestamp"])]
    json: bool,
    /// The lines as the app wrote them: no `APP|out |` before them and no file headers;
    /// stderr's lines go to stderr (pm2's --raw).
    #[arg(long)]
    raw: bool,
    /// Put the time each new line is printed before it, in pm2's tokens (default
    /// YYYY-MM-DD-HH:mm:ss, pm2's). The past lines printed first have none (their time is
    /// not known; `--time` on the app puts it in the files). Give the app before it:
    /// `herd logs web --timestamp`.
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, default_missing_value = PM2_TIMESTAMP)]
    timestamp: Option<String>,
}

/// How each line is printed.
struct Printer {
    json: bool,
    raw: bool,
    /// `--timestamp`'s format; for `--json`, ISO 8601 UTC.
    time: Option<TimeFormat>,
    /// The time before a new line, built once per line here.
    buf: Vec<u8>,
}

pub fn main(args: LogsArgs) -> anyhow::Result<i32> {
    if let Some(format) = &args.timestamp {
        check_timestamp_format(format)?;
    }
    let Response::Apps { apps } = client::ask(Request::List {
        show_secrets: false,
    })?
    else {
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
    let mut tails: Vec<Tail> = chosen
        .iter()
        .flat_map(|app| Tail::of_app(app, !args.err, !args.out))
        .collect();
    let mut printer = Printer {
        json: args.json,
        raw: args.raw,
        time: match (&args.timestamp, args.json) {
            (_, true) => Some(TimeFormat::iso_utc()),
            (Some(format), _) => Some(TimeFormat::moment(format)),
            (None, false) => None,
        },
        buf: Vec::new(),
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let stderr = io::stderr();
    let mut err = stderr.lock();
    for t in &mut tails {
        if !args.json && !args.raw && args.lines > 0 {
            writeln!(out, "==> {} ({} lines) <==", t.path.display(), args.lines)?;
        }
        for line in t.last_lines(args.lines) {
            printer.print(&mut out, &mut err, t, &line, None)?;
        }
    }
    out.flush()?;
    if args.nostream {
        return Ok(0);
    }
    loop {
        let mut any = false;
        for t in &mut tails {
            let lines = t.read_new();
            if lines.is_empty() {
                continue;
            }
            any = true;
            let now = SystemTime::now();
            for line in lines {
                printer.print(&mut out, &mut err, t, &line, Some(now))?;
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

/// A `--timestamp` value with no date or time token (`YYYY`, `HH`, `mm` …)
/// is most likely an app's name the option took as its format (`herd logs
/// --timestamp web`, as pm2 would take it too): refused, saying so.
fn check_timestamp_format(format: &str) -> Result<(), crate::UsageError> {
    let unbracketed: String = format
        .split('[')
        .enumerate()
        .map(|(i, part)| match i {
            0 => part,
            _ => part.split_once(']').map_or(part, |(_, after)| after),
        })
        .collect();
    const TOKENS: [&str; 9] = ["YY", "MM", "DD", "HH", "hh", "mm", "ss", "SSS", "X"];
    if TOKENS.iter().any(|t| unbracketed.contains(t)) {
        return Ok(());
    }
    Err(crate::UsageError(format!(
        "--timestamp '{format}' has no date token (YYYY MM DD HH mm ss SSS Z): to follow an app \
         with timestamps, name the app first: `herd logs {format} --timestamp`"
    )))
}

impl Printer {
    /// Print one line of `t`; `at`: when it was read (`None`: a past line).
    fn print(
        &mut self,
        out: &mut impl Write,
        err: &mut impl Write,
        t: &Tail,
        line: &[u8],
        at: Option<SystemTime>,
    ) -> io::Result<()> {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        self.buf.clear();
        if let (Some(time), Some(at)) = (&self.time, at) {
            time.write(at, &mut self.buf);
        }
        let r = if self.json {
            let text = String::from_utf8_lossy(body);
            let stamp = String::from_utf8_lossy(&self.buf);
            let mut o = serde_json::json!({
                "app": t.app,
                "stream": t.stream,
                "message": text,
                "timestamp": if at.is_some() { serde_json::json!(stamp) } else { serde_json::Value::Null },
            });
            if let Some(i) = t.instance {
                o["instance"] = serde_json::json!(i);
            }
            writeln!(out, "{o}")
        } else {
            if !self.buf.is_empty() {
                self.buf.push(b' ');
            }
            if !self.raw {
                match t.instance {
                    Some(i) => write!(self.buf, "{}:{i}|{} | ", t.app, t.stream)?,
                    None => write!(self.buf, "{}|{} | ", t.app, t.stream)?,
                }
            }
            self.buf
                .extend_from_slice(String::from_utf8_lossy(body).as_bytes());
            self.buf.push(b'\n');
            if self.raw && t.stream == "err" {
                err.write_all(&self.buf)
            } else {
                out.write_all(&self.buf)
            }
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_format_needs_a_date_token() {
        assert!(check_timestamp_format(PM2_TIMESTAMP).is_ok());
        assert!(check_timestamp_format("HH:mm").is_ok());
        let e = check_timestamp_format("web").unwrap_err().0;
        assert!(e.contains("herd logs web --timestamp"), "{e}");
        assert!(check_timestamp_format("[at]").is_err());
    }
}
