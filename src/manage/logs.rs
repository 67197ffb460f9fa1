//! `herd logs`: the last lines of apps' log files, then new lines as they
//! are written (as pm2 does, streaming by default). The CLI reads the files
//! itself: the daemon only says where they are, so a slow reader never
//! costs the daemon memory. Rotation and truncation are followed.

use std::io::{self, Write};
use std::time::Duration;

use clap::Args;
use herd_protocol::{Request, Response};

use super::client;
use super::tail::Tail;

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

pub fn main(args: LogsArgs) -> anyhow::Result<i32> {
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
