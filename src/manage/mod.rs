//! pm2's verbs, over the herd daemon: `start`, `stop`, `restart`, `reload`,
//! `delete` (of apps, or of a config file's apps: [`files`]), `startOrReload`
//! and its kin, `list`, `jlist`/`prettylist` in pm2's schema ([`pm2json`]),
//! `show`, `env`, `logs`, `monit`, `flush`, `reset`, `scale`, `send`,
//! `signal`, `save`, `resurrect`, `import pm2` ([`import`]), `startup`,
//! `kill`, `ping`, and `daemon` itself.
//! Each verb builds one request ([`client`]) and prints the answer; the
//! tables, the log tail, the wait for apps to come up ([`settle`]) live in
//! their own modules.

mod client;
mod env;
mod files;
mod import;
mod list;
mod logs;
mod monit;
mod pm2json;
mod settle;
mod start;
mod startup;
mod tail;
mod update;

use clap::{Args, Subcommand};
use herd_protocol::{Request, Response, ScaleTo};

use crate::UsageError;

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Run the herd daemon in the foreground (for systemd and containers; the
    /// other verbs start it in the background when it is not running).
    Daemon(DaemonArgs),
    /// Start an app (a script, a command, or a config file: ./ecosystem.config.js
    /// when none is given) under the daemon, and wait until it is online.
    Start(Box<start::StartArgs>),
    /// Stop an app's workers gracefully (or a config file's apps); it stays in the list.
    Stop(Targets),
    /// Stop and start an app (all workers at once); `app:N` replaces worker N only, without downtime.
    /// A config file: its apps restarted on their new definition, the missing ones started.
    Restart(Targets),
    /// Replace an app's workers one at a time, each once its successor is ready (no request lost).
    /// A config file: its apps reloaded onto their new definition, the missing ones started.
    Reload(Targets),
    /// Stop an app (or a config file's apps) and remove it from the list.
    #[command(visible_alias = "del")]
    Delete(Targets),
    /// A config file: reload its apps onto their new definition, start the missing ones (pm2's deploy verb).
    #[command(name = "startOrReload")]
    StartOrReload(FileTarget),
    /// A config file: restart its apps on their new definition, start the missing ones.
    #[command(name = "startOrRestart")]
    StartOrRestart(FileTarget),
    /// The same as startOrReload (pm2 keeps both names).
    #[command(name = "startOrGracefulReload")]
    StartOrGracefulReload(FileTarget),
    /// The apps and their workers.
    #[command(visible_aliases = ["ls", "ps", "status"])]
    List(list::ListArgs),
    /// Every worker process as pm2's `jlist` prints it (`pm2_env`, `monit` …), for pm2's tools;
    /// herd's own schema is `list --json`.
    Jlist(list::JlistArgs),
    /// `jlist`, indented.
    Prettylist(list::JlistArgs),
    /// One app in detail.
    #[command(visible_aliases = ["desc", "describe"])]
    Show(list::ShowArgs),
    /// The environment of an app's worker (`APP:N`; worker 0 by default), one `NAME: value` a line.
    Env(env::EnvArgs),
    /// Zero an app's restart counters (the workers keep running).
    Reset(Apps),
    /// Show an app's log lines and follow them.
    Logs(logs::LogsArgs),
    /// A terminal dashboard: apps, workers, CPU and memory, the selected app's logs; keys to reload, restart, scale, stop.
    Monit,
    /// Empty the log files of an app (or all).
    Flush(OptionalApps),
    /// Set an app's worker count: N, +N or -N.
    Scale(ScaleArgs),
    /// Send a JSON message to an app's workers (`process.on('message')`): APP or APP:WORKER.
    Send(SendArgs),
    /// Send a signal to the workers of an app (their process groups).
    #[command(visible_alias = "sendSignal")]
    Signal(SignalArgs),
    /// Save the app list, to be started again by `resurrect` or at boot.
    Save(SaveArgs),
    /// Start the saved apps that are not running.
    Resurrect,
    /// Take over another manager's saved apps: `herd import pm2` starts what `pm2 save` wrote.
    Import(import::ImportArgs),
    /// Print a systemd unit that runs the daemon at boot and resurrects the saved apps (--install writes and enables it).
    Startup(startup::StartupArgs),
    /// Stop every app gracefully, then the daemon.
    Kill,
    /// Replace herd's running processes (the daemon, then each app's supervisor) by the
    /// binary now on disk, in place: same pids, same workers, the apps serving on
    /// (what `systemctl reload` runs).
    Update,
    /// Check that the daemon answers (starting it if needed).
    Ping,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Start the saved app list at once (what `herd startup`'s unit does at boot).
    #[arg(long)]
    resurrect: bool,
    /// Serve Prometheus metrics (/metrics), health probes (/healthz, /readyz?app=NAME)
    /// and a live status page (/) on this address, e.g. 127.0.0.1:9209. Off by default.
    /// A daemon that a CLI command starts takes it from that command's HERD_METRICS.
    #[arg(long, env = "HERD_METRICS", value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// With --metrics: allow the status page's reload/restart/stop buttons (POST endpoints).
    /// HERD_METRICS_ADMIN takes 1/true/yes/on or 0/false/no/off.
    #[arg(long, env = "HERD_METRICS_ADMIN", value_parser = switch)]
    metrics_admin: bool,
    /// More environment variables whose values are hidden in show, list, jlist, the status
    /// page and metrics (beyond names containing KEY, SECRET, TOKEN, PASS, CREDENTIAL or
    /// PRIVATE): exact names or `*` globs, comma-separated, e.g. DATABASE_URL,*_DSN.
    #[arg(long, env = herd_protocol::secrets::SECRET_NAMES_ENV, value_name = "NAMES",
          value_parser = herd_protocol::SecretNames::parse)]
    secret_names: Option<herd_protocol::SecretNames>,
    /// With --metrics: a name the listener also answers to, as clients send it in the Host
    /// header (NAME or NAME:PORT); repeatable. Other names are refused (DNS rebinding);
    /// its own IP:PORT, and localhost:PORT on loopback, are always accepted.
    /// HERD_METRICS_HOST takes a comma-separated list.
    #[arg(
        long = "metrics-host",
        env = "HERD_METRICS_HOST",
        value_name = "NAME",
        value_delimiter = ','
    )]
    metrics_hosts: Vec<herd_daemon::http::AllowedHost>,
}

/// A yes/no setting from the environment, spelled as people do.
fn switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(
            "--metrics-admin (HERD_METRICS_ADMIN) takes 1, true, yes or on to allow the \
                  actions, or 0, false, no or off to refuse them"
                .into(),
        ),
    }
}

#[derive(Args, Debug)]
pub struct Apps {
    /// An app's name, its id, a namespace, or `all`.
    #[arg(value_name = "APP|ID|all")]
    apps: String,
}

/// An app (as [`Apps`]) or a config file, with pm2's flags for files.
#[derive(Args, Debug)]
pub struct Targets {
    /// An app's name, its id, a namespace, `all`, or a config file (its apps,
    /// matched by name).
    #[arg(value_name = "APP|ID|all|FILE")]
    target: String,
    #[command(flatten)]
    flags: files::FileFlags,
}

/// A config file, with pm2's flags for files.
#[derive(Args, Debug)]
pub struct FileTarget {
    /// A config file: herd.toml, ecosystem.config.js (.cjs, .mjs), .json, .yaml.
    #[arg(value_name = "FILE")]
    file: std::path::PathBuf,
    #[command(flatten)]
    flags: files::FileFlags,
}

#[derive(Args, Debug)]
pub struct OptionalApps {
    /// An app's name, its id, or `all` (the default).
    #[arg(value_name = "APP|ID|all", default_value = "all")]
    apps: String,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// The app's name or id.
    app: String,
    /// The new worker count (N), or a change (+N, -N).
    #[arg(allow_hyphen_values = true, value_parser = scale_to)]
    count: ScaleTo,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// APP, or APP:WORKER for one worker.
    target: String,
    /// The message as JSON: '{"cmd":"refresh"}', or '"text"' for a string.
    message: String,
}

#[derive(Args, Debug)]
pub struct SignalArgs {
    /// The signal: SIGUSR2, USR2, HUP, 12 …
    signal: String,
    /// An app's name, its id, or `all`.
    #[arg(value_name = "APP|ID|all")]
    apps: String,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Save even an empty list over a saved one.
    #[arg(long)]
    force: bool,
}

fn scale_to(s: &str) -> Result<ScaleTo, String> {
    let err = || format!("invalid count '{s}': use N, +N or -N (3, +1, -2)");
    if let Some(n) = s.strip_prefix('+') {
        return n.parse::<i64>().map(ScaleTo::By).map_err(|_| err());
    }
    if s.starts_with('-') {
        return s.parse::<i64>().map(ScaleTo::By).map_err(|_| err());
    }
    s.parse::<usize>().map(ScaleTo::Exactly).map_err(|_| err())
}

/// `app` or `app:worker`.
fn split_target(target: &str) -> Result<(String, Option<usize>), UsageError> {
    match target.rsplit_once(':') {
        Some((app, worker)) => worker
            .parse::<usize>()
            .map(|w| (app.to_string(), Some(w)))
            .map_err(|_| {
                UsageError(format!(
                    "invalid worker in '{target}': use APP:N with N a worker id from `herd list`"
                ))
            }),
        None => Ok((target.to_string(), None)),
    }
}

/// Print what the daemon did.
fn print_done(response: Response) {
    if let Response::Done { message } = response {
        if !message.is_empty() {
            println!("{message}");
        }
    }
}

pub fn main(verb: Verb) -> anyhow::Result<i32> {
    if !matches!(verb, Verb::Daemon(_)) {
        // A CLI whose reader went away (`herd list | head`) ends quietly, as
        // Unix tools do. (The daemon keeps SIGPIPE ignored: it writes to pipes.)
        // SAFETY: setting a signal's disposition to default has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match verb {
        Verb::Daemon(args) => {
            if args.metrics.is_none() && (args.metrics_admin || !args.metrics_hosts.is_empty()) {
                return Err(UsageError(
                    "--metrics-admin and --metrics-host (HERD_METRICS_ADMIN, HERD_METRICS_HOST) \
                     need --metrics ADDR (HERD_METRICS): set it, or unset them"
                        .into(),
                )
                .into());
            }
            let home = herd_daemon::Home::from_env()?;
            let code = herd_daemon::run(herd_daemon::Options {
                home,
                resurrect: args.resurrect,
                metrics: args.metrics,
                metrics_admin: args.metrics_admin,
                secrets: args.secret_names.unwrap_or_default(),
                metrics_hosts: args.metrics_hosts,
            })?;
            return Ok(code);
        }
        Verb::Start(args) => return start::main(*args),
        Verb::Stop(t) => {
            if let Some(file) = files::as_file(&t.target) {
                return files::run(files::FileVerb::Stop, &file, &t.flags);
            }
            t.flags.app_only("stop")?;
            print_done(client::ask(Request::Stop { apps: t.target })?);
            list::print_list(false, false)?;
        }
        Verb::Restart(t) => {
            if let Some(file) = files::as_file(&t.target) {
                return files::run(files::FileVerb::Restart, &file, &t.flags);
            }
            t.flags.app_only("restart")?;
            if t.flags.update_env {
                return files::update_env(&t.target, true);
            }
            let (apps, slot) = split_target(&t.target)?;
            let names = settle::names_of(&apps)?;
            print_done(client::ask(Request::Restart { apps, slot })?);
            return settle::wait_and_print(&names, true);
        }
        Verb::Reload(t) => {
            if let Some(file) = files::as_file(&t.target) {
                return files::run(files::FileVerb::Reload, &file, &t.flags);
            }
            t.flags.app_only("reload")?;
            if t.flags.update_env {
                return files::update_env(&t.target, false);
            }
            print_done(client::ask(Request::Reload { apps: t.target })?);
            list::print_list(false, false)?;
        }
        Verb::Delete(t) => {
            if let Some(file) = files::as_file(&t.target) {
                return files::run(files::FileVerb::Delete, &file, &t.flags);
            }
            t.flags.app_only("delete")?;
            print_done(client::ask(Request::Delete { apps: t.target })?);
            list::print_list(false, false)?;
        }
        Verb::StartOrReload(f) | Verb::StartOrGracefulReload(f) => {
            return files::run(
                files::FileVerb::StartOrReload,
                &files::need_file(&f.file)?,
                &f.flags,
            )
        }
        Verb::StartOrRestart(f) => {
            return files::run(
                files::FileVerb::StartOrRestart,
                &files::need_file(&f.file)?,
                &f.flags,
            )
        }
        Verb::List(args) => list::print_list(args.json, args.show_secrets)?,
        Verb::Jlist(args) => pm2json::print(false, args.show_secrets)?,
        Verb::Prettylist(args) => pm2json::print(true, args.show_secrets)?,
        Verb::Show(args) => list::show(args)?,
        Verb::Env(args) => return env::main(args),
        Verb::Reset(a) => {
            print_done(client::ask(Request::Reset { apps: a.apps })?);
            list::print_list(false, false)?;
        }
        Verb::Logs(args) => return logs::main(args),
        Verb::Monit => return monit::main(),
        Verb::Flush(a) => print_done(client::ask(Request::Flush { apps: a.apps })?),
        Verb::Scale(a) => {
            print_done(client::ask(Request::Scale {
                app: a.app,
                to: a.count,
            })?);
            list::print_list(false, false)?;
        }
        Verb::Send(a) => {
            let (app, slot) = split_target(&a.target)?;
            let message: serde_json::Value = serde_json::from_str(&a.message).map_err(|e| {
                UsageError(format!(
                    "the message is not JSON ({e}): quote a string as '\"text\"', or give an object '{{\"cmd\":\"x\"}}'"
                ))
            })?;
            print_done(client::ask(Request::Send { app, slot, message })?);
        }
        Verb::Signal(a) => {
            let signal = a.signal.parse().map_err(UsageError)?;
            print_done(client::ask(Request::Signal {
                apps: a.apps,
                signal,
            })?)
        }
        Verb::Save(a) => print_done(client::ask(Request::Save { force: a.force })?),
        Verb::Resurrect => match client::ask(Request::Resurrect)? {
            Response::Apps { apps } => {
                let names: Vec<String> = apps.into_iter().map(|a| a.name).collect();
                return settle::wait_and_print(&names, false);
            }
            other => print_done(other),
        },
        Verb::Import(args) => return import::main(args),
        Verb::Startup(args) => return startup::main(args),
        Verb::Kill => return kill(),
        Verb::Update => return update::main(),
        Verb::Ping => {
            if let Response::Pong {
                pid,
                uptime_ms,
                apps,
            } = client::ask(Request::Ping)?
            {
                println!(
                    "pong: daemon pid {pid}, up {}, {apps} app(s)",
                    list::uptime(uptime_ms)
                );
            }
        }
    }
    Ok(0)
}

/// `herd kill`: stop every app, then wait for the daemon to be gone. With
/// no daemon running but apps that outlived the last one (their
/// supervisors run), a daemon is started to stop them.
fn kill() -> anyhow::Result<i32> {
    let root = herd_daemon::Home::location()?;
    let apps_run = || -> bool {
        let Ok(Some(home)) = herd_daemon::Home::open_existing(&root) else {
            return false;
        };
        let Ok(apps) = herd_supervisor::files::AppsDir::open(&home) else {
            return false;
        };
        apps.ids()
            .unwrap_or_default()
            .into_iter()
            .any(|id| apps.app(id).running_pid().is_some())
    };
    let response = match client::request(Request::Kill, false)? {
        Some(r) => Some(r),
        None if apps_run() => client::request(Request::Kill, true)?,
        None => None,
    };
    let Some(response) = response else {
        println!("no herd daemon runs with HERD_HOME={}", root.display());
        return Ok(0);
    };
    let Some(home) = herd_daemon::Home::open_existing(&root)? else {
        return Ok(0);
    };
    print_done(response);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while home.running_pid().is_some() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the daemon did not exit within 10 s; see {}",
                home.daemon_log().display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_counts() {
        assert_eq!(scale_to("3").unwrap(), ScaleTo::Exactly(3));
        assert_eq!(scale_to("+2").unwrap(), ScaleTo::By(2));
        assert_eq!(scale_to("-1").unwrap(), ScaleTo::By(-1));
        assert!(scale_to("x").is_err());
        assert!(scale_to("+").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(split_target("web").unwrap(), ("web".into(), None));
        assert_eq!(split_target("web:2").unwrap(), ("web".into(), Some(2)));
        assert!(split_target("web:x").is_err());
    }
}
