//! The pm2 keys herd reads and keeps but does not act on yet, each named in
//! one warning. This is the one place that says so: the phase that honours a
//! key deletes its line here (and moves the field out of
//! [`herd_protocol::Pm2Keys`]).

use herd_protocol::{AppDef, LogType};

/// One warning per key of `def` that is not honoured yet.
pub fn not_yet_honoured(def: &AppDef) -> Vec<String> {
    let k = &def.pm2;
    let mut w = Vec::new();
    let mut say = |key: &str, what: String| {
        w.push(format!("'{key}' is read but not honoured yet: {what}"));
    };
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
    w
}
