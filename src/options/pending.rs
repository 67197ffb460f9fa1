//! The pm2 keys herd reads and keeps but does not act on yet, each named in
//! one warning. This is the one place that says so: the phase that honours a
//! key deletes its line here (and moves the field out of
//! [`herd_protocol::Pm2Keys`]).

use herd_engine::config::{ExecMode, WorkerKind};
use herd_protocol::{AppDef, FilterEnv};

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
    if let Some(ms) = k.exp_backoff_restart_delay_ms {
        say(
            "exp_backoff_restart_delay",
            format!("herd's backoff starts at {ms} ms and doubles up to 15 s (pm2's grows ×1.5 and resets after 30 s up)"),
        );
    }
    w
}
