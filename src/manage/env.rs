//! `herd env APP[:N]`: the environment of one worker, `NAME: value` a line
//! in name order (pm2's `env <id>`; pm2's ids in `jlist` are herd's app ids).
//! A running worker's is read from `/proc/PID/environ`, so it is what the
//! process really got (herd's per-worker variables included); a stopped
//! one's is the app's environment, which it gets when it starts.

use clap::Args;

use super::{settle, split_target};
use crate::UsageError;

#[derive(Args, Debug)]
pub struct EnvArgs {
    /// The app (name or id), or APP:N for worker N; worker 0 by default.
    #[arg(value_name = "APP[:N]|ID")]
    target: String,
    /// Show secret environment values instead of hiding them.
    #[arg(long)]
    show_secrets: bool,
}

pub fn main(args: EnvArgs) -> anyhow::Result<i32> {
    let (selector, worker) = split_target(&args.target)?;
    let apps = settle::details(args.show_secrets)?;
    let app = match settle::select(&apps, &selector).as_slice() {
        [one] => *one,
        [] => {
            return Err(UsageError(format!(
                "no app named '{selector}': `herd list` shows the apps and their ids"
            ))
            .into())
        }
        _ => {
            return Err(UsageError(format!(
                "'{selector}' names several apps (a namespace): give one app"
            ))
            .into())
        }
    };
    let slot = worker.unwrap_or(0);
    let Some(w) = app.info.current_workers().find(|w| w.slot == slot) else {
        return Err(UsageError(format!(
            "{} has no worker {slot}: its workers are 0 to {}",
            app.info.name,
            app.info.instances.saturating_sub(1)
        ))
        .into());
    };
    let mut vars: Vec<(String, String)> = match w.pid.and_then(read_environ) {
        Some(vars) => vars,
        None => {
            eprintln!(
                "herd: {}:{slot} is not running: the environment it starts with, \
                 before herd's per-worker variables",
                app.info.name
            );
            app.def.spec.env.to_vec()
        }
    };
    if !args.show_secrets {
        // The daemon hides them in what it answers; /proc is read here, so
        // here too (by the operator's list when this shell has it).
        let names = std::env::var(herd_protocol::secrets::SECRET_NAMES_ENV)
            .ok()
            .and_then(|list| herd_protocol::SecretNames::parse(&list).ok())
            .unwrap_or_default();
        names.redact_env(&mut vars);
    }
    vars.sort();
    for (k, v) in vars {
        println!("{k}: {v}");
    }
    Ok(0)
}

/// A process's environment as it was started (`None`: gone, or not ours).
fn read_environ(pid: u32) -> Option<Vec<(String, String)>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| {
                let text = String::from_utf8_lossy(v);
                match text.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (text.into_owned(), String::new()),
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_environ() {
        let vars = super::read_environ(std::process::id()).unwrap();
        assert!(vars.iter().any(|(k, _)| k == "PATH"), "{vars:?}");
    }
}
