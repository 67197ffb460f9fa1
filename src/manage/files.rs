//! Config files as units, as pm2 has them: `start | restart | reload | stop |
//! delete FILE`, `startOrReload`, `startOrRestart` and
//! `startOrGracefulReload FILE`, each with `--env NAME` (the file's
//! `env_NAME`) and `--only a,b` (split on `,` or spaces, for every verb —
//! pm2's stop and delete match the whole string, a bug not copied).
//!
//! | verb | an app of the file herd runs | one it does not |
//! |---|---|---|
//! | `start`, `reload`, `startOrReload`, `startOrGracefulReload` | reloaded onto its new definition | started |
//! | `restart`, `startOrRestart` | stopped, then started on its new definition | started |
//! | `stop`, `delete` | stopped / deleted | skipped, with a note |
//!
//! Apps are matched by name. The whole file is checked before anything is
//! sent to the daemon — its syntax, every app's keys, script, interpreter,
//! working directory — and one bad app refuses the file with that app named:
//! a mistake changes nothing (pm2 starts the good apps and leaves the bad
//! one's error in a scrolled-away line). `--update-env` is accepted: with a
//! file herd always gives the apps the file's env and the current shell's.

use std::path::{Path, PathBuf};

use clap::Args;
use herd_protocol::{AppDef, Request, Response};

use super::{client, list, print_done, settle};
use crate::appfile::{self, FileApp};
use crate::options::app_def;
use crate::UsageError;

/// pm2's flags for config files, on the verbs that take an app or a file.
#[derive(Args, Debug, Default, Clone)]
pub struct FileFlags {
    /// With a config file: merge its env_NAME over env (pm2's --env production).
    #[arg(long = "env", value_name = "NAME")]
    pub env: Option<String>,
    /// With a config file: only these of its apps, by name ("api,worker" or "api worker").
    #[arg(long, value_name = "APPS")]
    pub only: Option<String>,
    /// With an app: merge the current environment into the app's, then restart or reload it
    /// (pm2's -a). With a config file herd always takes the file's env and the current one.
    #[arg(short = 'a', long)]
    pub update_env: bool,
}

impl FileFlags {
    /// `--env` and `--only` name parts of a file: refuse them for an app.
    pub fn app_only(&self, verb: &str) -> Result<(), UsageError> {
        if self.env.is_some() || self.only.is_some() {
            return Err(UsageError(format!(
                "--env NAME and --only pick a config file's profile and apps: \
                 give the file, as in `herd {verb} ecosystem.config.js --only api`"
            )));
        }
        Ok(())
    }
}

/// What to do with a file's apps (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileVerb {
    Start,
    Reload,
    Restart,
    StartOrReload,
    StartOrRestart,
    Stop,
    Delete,
}

impl FileVerb {
    /// An app that runs is restarted on its new definition (not reloaded).
    fn restarts(self) -> bool {
        matches!(self, FileVerb::Restart | FileVerb::StartOrRestart)
    }
}

/// The target as a config file, when it names one (by its name, as pm2's
/// `isConfigFile` does: `*.config.js`, `.json`, `.yaml`, `.toml` …).
pub fn as_file(target: &str) -> Option<PathBuf> {
    let path = PathBuf::from(target);
    appfile::is_config_file(&path).then_some(path)
}

/// A verb that only takes files: refuse anything else.
pub fn need_file(path: &Path) -> Result<PathBuf, UsageError> {
    if appfile::is_config_file(path) {
        Ok(path.to_path_buf())
    } else {
        Err(UsageError(format!(
            "'{}' is not a config file: give herd.toml, ecosystem.config.js (.cjs, .mjs), \
             a .json or a .yaml file; for an app by name use `herd reload NAME`",
            path.display()
        )))
    }
}

/// Run `verb` on the apps of `file`.
pub fn run(verb: FileVerb, file: &Path, flags: &FileFlags) -> anyhow::Result<i32> {
    run_with(verb, file, flags, |_| {})
}

/// Run `verb` on the apps of `file`, each definition passed through `tweak`
/// first (`herd start FILE --namespace x`).
pub fn run_with(
    verb: FileVerb,
    file: &Path,
    flags: &FileFlags,
    tweak: impl Fn(&mut AppDef),
) -> anyhow::Result<i32> {
    let apps = pick(
        load(file, flags.env.as_deref())?,
        flags.only.as_deref(),
        file,
    )?;
    match verb {
        FileVerb::Stop | FileVerb::Delete => stop_or_delete(verb, &apps),
        _ => {
            let mut defs = defs(&apps, file)?;
            defs.iter_mut().for_each(&tweak);
            let names: Vec<String> = defs.iter().map(|d| d.spec.name.clone()).collect();
            match client::ask(Request::Start {
                apps: defs,
                update: true,
                restart: verb.restarts(),
                stopped: Vec::new(),
            })? {
                Response::Apps { .. } => settle::wait_and_print(&names, false),
                other => {
                    print_done(other);
                    Ok(0)
                }
            }
        }
    }
}

/// Read the file (relative to the current directory) and print its warnings.
fn load(file: &Path, profile: Option<&str>) -> anyhow::Result<Vec<FileApp>> {
    let cwd = std::env::current_dir()?;
    let (apps, warnings) = appfile::load(&cwd.join(file), profile)?;
    for w in warnings {
        eprintln!("herd: warning: {w}");
    }
    Ok(apps)
}

/// The name an app of a file gets.
pub fn name_of(app: &FileApp) -> String {
    app.options.name.clone().unwrap_or_else(|| {
        let program = app.command.first().map(String::as_str).unwrap_or_default();
        Path::new(program)
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| program.to_string())
    })
}

/// `--only a,b` (or "a b"): the names, in order, without blanks.
pub fn split_only(only: &str) -> Vec<&str> {
    only.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The apps `--only` keeps (all without it), in the file's order; a name
/// the file does not have is a mistake.
fn pick(apps: Vec<FileApp>, only: Option<&str>, file: &Path) -> Result<Vec<FileApp>, UsageError> {
    let Some(only) = only else { return Ok(apps) };
    let wanted = split_only(only);
    if wanted.is_empty() {
        return Err(UsageError(
            "--only names no app: give the apps' names, as in --only api,worker".into(),
        ));
    }
    let names: Vec<String> = apps.iter().map(name_of).collect();
    for w in &wanted {
        if !names.iter().any(|n| n == w) {
            return Err(UsageError(format!(
                "--only {w}: {} has no app named '{w}'; its apps are: {}",
                file.display(),
                names.join(", ")
            )));
        }
    }
    Ok(apps
        .into_iter()
        .filter(|a| wanted.contains(&name_of(a).as_str()))
        .collect())
}

/// Every app's definition, or the first app's mistake (naming the app):
/// nothing is sent before all of them are good.
fn defs(apps: &[FileApp], file: &Path) -> Result<Vec<AppDef>, UsageError> {
    let mut defs = apps
        .iter()
        .map(|a| {
            let def = app_def(&a.options, &a.daemon, &a.command, &a.base).map_err(|e| {
                UsageError(format!(
                    "{}: app '{}': {e}; nothing was started or changed (fix it, or leave the app \
                     out with --only)",
                    file.display(),
                    name_of(a)
                ))
            })?;
            Ok(def)
        })
        .collect::<Result<Vec<AppDef>, UsageError>>()?;
    unwatch_each_others_logs(&mut defs);
    Ok(defs)
}

/// The apps of one file often watch one folder and log into it (`watch:
/// true` with `out_file: './logs/api.log'`): an app's own log lines never
/// count as an edit, and neither may its neighbours', or two apps reload each
/// other on every line they log, forever (as they restart each other under
/// pm2).
fn unwatch_each_others_logs(defs: &mut [AppDef]) {
    let logs: Vec<PathBuf> = defs
        .iter()
        .flat_map(|d| [&d.logs.out_file, &d.logs.error_file, &d.logs.log_file])
        .flatten()
        .cloned()
        .collect();
    for def in defs.iter_mut() {
        for path in &logs {
            crate::options::unwatch_log(def, path);
        }
    }
}

/// `stop FILE`, `delete FILE`: each app of the file herd runs, at once; the
/// others are named and skipped.
fn stop_or_delete(verb: FileVerb, apps: &[FileApp]) -> anyhow::Result<i32> {
    let Response::Apps { apps: running } = client::ask(Request::List {
        show_secrets: false,
    })?
    else {
        anyhow::bail!("the daemon answered list with something else");
    };
    let (known, unknown): (Vec<String>, Vec<String>) = apps
        .iter()
        .map(name_of)
        .partition(|n| running.iter().any(|r| &r.name == n));
    for name in &unknown {
        println!("{name} is not in herd's list: skipped");
    }
    let replies: Vec<anyhow::Result<Response>> = std::thread::scope(|s| {
        let tasks: Vec<_> = known
            .iter()
            .map(|name| {
                let apps = name.clone();
                s.spawn(move || {
                    client::ask(match verb {
                        FileVerb::Delete => Request::Delete { apps },
                        _ => Request::Stop { apps },
                    })
                })
            })
            .collect();
        tasks
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a request failed")))
            })
            .collect()
    });
    let mut errors = Vec::new();
    for r in replies {
        match r {
            Ok(done) => print_done(done),
            Err(e) => errors.push(e),
        }
    }
    list::print_list(false, false)?;
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(0),
    }
}

/// `restart|reload APP --update-env`: the app's definition with the current
/// environment merged in (added and overwritten), started over it.
pub fn update_env(selector: &str, restart: bool) -> anyhow::Result<i32> {
    // The whole definition, secrets included: it is sent back as the app's new one.
    let apps = settle::details(true)?;
    let chosen = settle::select(&apps, selector);
    if chosen.is_empty() {
        return Err(UsageError(format!(
            "no app named '{selector}': `herd list` shows the apps and their ids"
        ))
        .into());
    }
    let defs: Vec<AppDef> = chosen
        .iter()
        .map(|a| {
            let mut def = a.def.clone();
            // What the app's filter_env keeps out stays out.
            for (k, v) in &crate::options::cli_env(def.pm2.filter_env.as_ref()) {
                match def.spec.env.iter_mut().find(|(ours, _)| ours == k) {
                    Some(slot) => slot.1 = v.clone(),
                    None => def.spec.env.push((k.clone(), v.clone())),
                }
            }
            def
        })
        .collect();
    let names: Vec<String> = defs.iter().map(|d| d.spec.name.clone()).collect();
    match client::ask(Request::Start {
        apps: defs,
        update: true,
        restart,
        stopped: Vec::new(),
    })? {
        Response::Apps { .. } => settle::wait_and_print(&names, true),
        other => {
            print_done(other);
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_splits_on_commas_and_spaces() {
        assert_eq!(split_only("a,b"), vec!["a", "b"]);
        assert_eq!(split_only("a b"), vec!["a", "b"]);
        assert_eq!(split_only(" a, b ,,c "), vec!["a", "b", "c"]);
        assert!(split_only(" , ").is_empty());
    }

    #[test]
    fn file_verbs_take_only_config_files() {
        assert!(as_file("ecosystem.config.js").is_some());
        assert!(as_file("conf/app.json").is_some());
        assert!(as_file("web").is_none());
        assert!(as_file("app.js").is_none());
        assert!(need_file(Path::new("app.js")).is_err());
    }
}
