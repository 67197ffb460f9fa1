//! `herd start`: a script, a command, a config file (`./ecosystem.config.js`
//! when nothing is named, as under pm2), or the name of an app that is
//! stopped; then it waits until the apps are online ([`settle`]) and prints
//! them with their real pids and memory.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use herd_protocol::{AppDef, AppState, Request, Response};

use super::files::{self, FileFlags, FileVerb};
use super::{client, settle};
use crate::options::{app_def, AppOptions, DaemonOptions, EnvArg};
use crate::UsageError;

/// What `herd start` reads when given nothing, as pm2 does.
const DEFAULT_FILE: &str = "ecosystem.config.js";

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  herd start app.js -i max\n  PORT=8000 herd start server.js --name api --env NODE_ENV=production\n  herd start ./server --listen 127.0.0.1:8000 -- --workers-flag\n  herd start ecosystem.config.js --env production --only api,worker\n  herd start                (./ecosystem.config.js)\n  herd start api            (an app that is stopped)"
)]
pub struct StartArgs {
    #[command(flatten)]
    app: AppOptions,

    #[command(flatten)]
    daemon: DaemonOptions,

    #[command(flatten)]
    pm2: Pm2Flags,

    /// A script (app.js), a program (./server, python3), a config file
    /// (herd.toml, ecosystem.config.js, .json, .yaml), or the name or id of a stopped app.
    /// Default: ./ecosystem.config.js.
    #[arg(value_name = "SCRIPT|COMMAND|FILE|APP")]
    target: Option<String>,

    /// Arguments for the program, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

/// pm2's `start` flags that are not app options of `herd run`.
#[derive(Args, Debug, Clone, Default)]
pub struct Pm2Flags {
    /// With a config file: only these of its apps, by name ("api,worker" or "api worker").
    #[arg(long, value_name = "APPS")]
    only: Option<String>,

    /// When an app of this name runs already, reload it onto this definition instead of
    /// refusing (pm2's -f starts a second copy under the same name; herd's names are unique).
    #[arg(short = 'f', long)]
    force: bool,

    /// Accepted for pm2's scripts: herd always gives a started app the current environment
    /// (and a config file's env).
    #[arg(short = 'a', long)]
    update_env: bool,

    /// One file per stream for all the workers: herd's default; it overrides a config file's
    /// `merge_logs: false` (pm2's --merge-logs).
    #[arg(long)]
    merge_logs: bool,

    /// Also write stdout and stderr together to one file: PATH, or $HERD_HOME/logs/NAME.log
    /// when none is given (pm2's -l/--log).
    #[arg(short = 'l', long = "log", value_name = "PATH", num_args = 0..=1, default_missing_value = "")]
    log: Option<String>,

    /// Never restart a worker that exits (pm2's --no-autorestart; the same as --restart never).
    #[arg(long)]
    no_autorestart: bool,

    /// pm2's namespace: a group of apps that `herd stop NAMESPACE` (and every verb) can name.
    #[arg(long, value_name = "NAME")]
    namespace: Option<String>,
}

impl Pm2Flags {
    /// Check the flags (before anything is sent).
    fn check(&self) -> Result<(), UsageError> {
        if let Some(ns) = &self.namespace {
            if ns.trim().is_empty() || ns == "all" || ns.parse::<u32>().is_ok() {
                return Err(UsageError(format!(
                    "invalid --namespace '{ns}': give a name (not empty, not 'all', not a number)"
                )));
            }
        }
        Ok(())
    }

    /// Put the flags into an app's definition.
    fn apply(&self, def: &mut AppDef, home_logs: &Path) {
        if self.no_autorestart {
            def.spec.restart.mode = herd_engine::config::RestartMode::Never;
        }
        if let Some(ns) = &self.namespace {
            def.namespace = Some(ns.clone());
        }
        if let Some(log) = &self.log {
            let path = if log.is_empty() {
                let stem = herd_engine::config::log_file_stem(&def.spec.name);
                home_logs.join(format!("{stem}.log"))
            } else {
                def.spec.cwd.clone().unwrap_or_default().join(log)
            };
            crate::options::unwatch_log(def, &path);
            def.logs.log_file = Some(path);
        }
        if self.merge_logs {
            def.logs.merge_logs = true;
        }
    }
}

pub fn main(mut args: StartArgs) -> anyhow::Result<i32> {
    args.pm2.check()?;
    let home = herd_daemon::Home::from_env()?;
    let home_logs = home.log_dir();
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let target = match args.target.take() {
        Some(t) => t,
        None if Path::new(DEFAULT_FILE).is_file() => DEFAULT_FILE.to_string(),
        None => {
            return Err(UsageError(format!(
                "no {DEFAULT_FILE} in {}: give a script, a command or a config file \
                 (herd start app.js)",
                cwd.display()
            ))
            .into())
        }
    };
    if let Some(file) = files::as_file(&target) {
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
        if args.app.env.iter().any(|e| matches!(e, EnvArg::Var(..))) {
            return Err(UsageError(
                "--env NAME=VALUE does not reach a config file's apps: put the variable in the \
                 file's env (or export it: the apps get the current environment)"
                    .into(),
            )
            .into());
        }
        let flags = FileFlags {
            env: profiles.into_iter().next(),
            only: args.pm2.only.clone(),
            update_env: args.pm2.update_env,
        };
        let pm2 = args.pm2.clone();
        return files::run_with(FileVerb::Start, &file, &flags, |def| {
            pm2.apply(def, home_logs)
        });
    }
    if args.pm2.only.is_some() {
        return Err(UsageError(
            "--only picks apps of a config file: give the file, as in \
             `herd start ecosystem.config.js --only api`"
                .into(),
        )
        .into());
    }
    let running = match client::ask(Request::List {
        show_secrets: false,
    })? {
        Response::Apps { apps } => apps,
        _ => Vec::new(),
    };
    // A bare word that is no file may be a stopped app: start that.
    let path = Path::new(&target);
    let looks_like_app = !target.contains('/') && !path.exists();
    if looks_like_app && args.args.is_empty() {
        if let Some(app) = running
            .iter()
            .find(|a| a.name == target || a.id.to_string() == target)
        {
            let name = app.name.clone();
            super::print_done(client::ask(Request::Restart {
                apps: target,
                slot: None,
            })?);
            return settle::wait_and_print(&[name], false);
        }
    }
    // One worker unless told otherwise, as under pm2 (app_def's default;
    // `herd run` uses every CPU).
    let mut command = vec![target];
    command.append(&mut args.args);
    let mut def = app_def(&args.app, &args.daemon, &command, &cwd)?;
    args.pm2.apply(&mut def, home_logs);
    // As under pm2, starting an app that exists and is stopped or errored
    // starts it (here on this definition); one that runs needs -f.
    let update = args.pm2.force
        || running.iter().any(|a| {
            a.name == def.spec.name && matches!(a.state, AppState::Stopped | AppState::Errored)
        });
    let name = def.spec.name.clone();
    match client::ask(Request::Start {
        apps: vec![def],
        update,
        restart: false,
        stopped: Vec::new(),
    })? {
        Response::Apps { .. } => settle::wait_and_print(&[name], false),
        other => {
            super::print_done(other);
            Ok(0)
        }
    }
}
