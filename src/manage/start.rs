//! `herd start`: a script, a command, a config file, or the name of an app
//! that is stopped.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use herd_protocol::{Request, Response};

use super::{client, list};
use crate::options::{app_def, AppOptions, DaemonOptions};
use crate::UsageError;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  herd start app.js -i max\n  PORT=8000 herd start server.js --name api --env NODE_ENV=production\n  herd start ./server --listen 127.0.0.1:8000 -- --workers-flag\n  herd start ecosystem.config.js --env production\n  herd start api            (an app that is stopped)"
)]
pub struct StartArgs {
    #[command(flatten)]
    app: AppOptions,

    #[command(flatten)]
    daemon: DaemonOptions,

    /// A script (app.js), a program (./server, python3), a config file
    /// (herd.toml, ecosystem.config.js, .json, .yaml), or the name or id of a stopped app.
    #[arg(value_name = "SCRIPT|COMMAND|FILE|APP")]
    target: String,

    /// Arguments for the program, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

pub fn main(mut args: StartArgs) -> anyhow::Result<i32> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let target = Path::new(&args.target);
    if crate::appfile::is_config_file(target) && target.is_file() {
        // `--env production` (no '=') names a profile, as in pm2.
        let profiles = args.app.profiles();
        if profiles.len() > 1 {
            return Err(UsageError(format!(
                "--env names {} profiles ({}): pick one",
                profiles.len(),
                profiles.join(", ")
            ))
            .into());
        }
        let (apps, warnings) =
            crate::appfile::load(&cwd.join(target), profiles.first().map(|p| p.as_str()))?;
        for w in warnings {
            eprintln!("herd: warning: {w}");
        }
        let mut defs = Vec::new();
        for a in apps {
            defs.push(app_def(&a.options, &a.daemon, &a.command, &a.base)?);
        }
        return send(Request::Start {
            apps: defs,
            update: true,
        });
    }
    // A bare word that is no file may be a stopped app: start that.
    let looks_like_app = !args.target.contains('/') && !target.exists();
    if looks_like_app && args.args.is_empty() {
        if let Ok(Response::Apps { apps }) = client::ask(Request::List {
            show_secrets: false,
        }) {
            if apps
                .iter()
                .any(|a| a.name == args.target || a.id.to_string() == args.target)
            {
                return send_done(Request::Restart {
                    apps: args.target,
                    worker: None,
                });
            }
        }
    }
    // One worker unless told otherwise, as under pm2 (app_def's default;
    // `herd run` uses every CPU).
    let mut command = vec![std::mem::take(&mut args.target)];
    command.append(&mut args.args);
    let def = app_def(&args.app, &args.daemon, &command, &cwd)?;
    send(Request::Start {
        apps: vec![def],
        update: false,
    })
}

fn send(request: Request) -> anyhow::Result<i32> {
    match client::ask(request)? {
        Response::Apps { apps } => list::print_table(&apps),
        other => super::print_done(other),
    }
    Ok(0)
}

fn send_done(request: Request) -> anyhow::Result<i32> {
    super::print_done(client::ask(request)?);
    list::print_list(false, false)?;
    Ok(0)
}
