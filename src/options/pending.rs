//! The pm2 keys herd reads and keeps but does not act on yet, each named in
//! one warning. This is the one place that says so: the phase that honours a
//! key deletes its line here (and moves the field out of
//! [`herd_protocol::Pm2Keys`]).

use herd_engine::config::{ExecMode, WorkerKind};
use herd_protocol::{AppDef, FilterEnv, LogType};

/// One warning per key of `def` that is not honoured yet. `fork_asked`: the
/// file said `exec_mode: fork` (or `execute_command`).
pub fn not_yet_honoured(def: &AppDef, fork_asked: bool) -> Vec<String> {
    let k = &def.pm2;
    let mut w = Vec::new();
    let mut say = |key: &str, what: String| {
        w.push(format!("'{key}' is read but not honoured yet: {what}"));
    };
    if fork_asked && def.spec.exec_mode == ExecMode::Fork && def.spec.kind == WorkerKind::Node {
        say(
            "exec_mode: fork",
            "each instance runs as a cluster worker of herd's, so an app that calls cluster.fork() itself runs as one worker; pm2's fork mode comes with a later release".into(),
        );
    }
    if k.watch.is_some() {
        say(
            "watch",
            "files are not watched; after an edit, `herd reload NAME`".into(),
        );
    }
    // Without `watch`, pm2 does nothing with these either.
    if k.watch.is_some() && k.ignore_watch.is_some() {
        say("ignore_watch", "files are not watched".into());
    }
    if k.watch.is_some() && k.watch_delay_ms.is_some() {
        say("watch_delay", "files are not watched".into());
    }
    if let Some(cron) = &k.cron_restart {
        say(
            "cron_restart",
            format!("no restart at '{cron}'; until then a cron job can run `herd reload NAME`"),
        );
    }
    if !k.stop_exit_codes.is_empty() {
        say(
            "stop_exit_codes",
            format!(
                "exits with {:?} are restarted like any other (autorestart: false stops every restart)",
                k.stop_exit_codes
            ),
        );
    }
    if let Some(filter) = &k.filter_env {
        let what = match filter {
            FilterEnv::All => "the app gets all of the CLI's environment".to_string(),
            FilterEnv::Exact(name) => format!("the app gets {name} from the CLI's environment"),
            FilterEnv::Containing(parts) => {
                format!("the app gets the CLI's variables containing {parts:?}")
            }
        };
        say("filter_env", what);
    }
    if let Some(var) = &k.increment_var {
        say(
            "increment_var",
            format!("every instance gets the same {var}"),
        );
    }
    if let Some(port) = k.port {
        say(
            "port",
            format!("PORT is not set from it; set it in env (PORT: {port})"),
        );
    }
    if k.log_type == Some(LogType::Json) {
        say(
            "log_type: json",
            "lines are written as the app writes them".into(),
        );
    }
    if k.log_file.is_some() {
        say(
            "log_file",
            "there is no combined log; the lines are in the out and error files".into(),
        );
    }
    if k.merge_logs == Some(false) {
        say(
            "merge_logs: false",
            "all instances write to one file per stream".into(),
        );
    }
    if let Some(ms) = k.exp_backoff_restart_delay_ms {
        say(
            "exp_backoff_restart_delay",
            format!("herd's backoff starts at {ms} ms and doubles up to 15 s (pm2's grows ×1.5 and resets after 30 s up)"),
        );
    }
    w
}
