//! `herd list` and `herd show`: the apps as a table that fits 80 columns
//! (one row per app, then one per worker), or as JSON.

use std::io::IsTerminal;

use clap::Args;
use herd_protocol::{AppInfo, AppState, Request, Response, WorkerInfo, WorkerRole, WorkerState};

use super::client;

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON: the apps, each with its workers (a stable schema; see the README).
    #[arg(long)]
    pub json: bool,
    /// Show secret environment values (names with KEY, SECRET, TOKEN, PASS, CREDENTIAL,
    /// PRIVATE, or the daemon's --secret-names) instead of hiding them.
    #[arg(long)]
    pub show_secrets: bool,
}

#[derive(Args, Debug)]
pub struct JlistArgs {
    /// Show secret environment values instead of hiding them.
    #[arg(long)]
    pub show_secrets: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The app's name or id.
    app: String,
    /// Print JSON: the app as `list --json` shows it, and its definition.
    #[arg(long)]
    json: bool,
    /// Show secret environment values (names with KEY, SECRET, TOKEN, PASS, CREDENTIAL,
    /// PRIVATE, or the daemon's --secret-names) instead of hiding them.
    #[arg(long)]
    show_secrets: bool,
}

pub fn print_list(json: bool, show_secrets: bool) -> anyhow::Result<()> {
    let Response::Apps { apps } = client::ask(Request::List { show_secrets })? else {
        anyhow::bail!("the daemon answered list with something else");
    };
    if json {
        println!("{}", serde_json::to_string(&apps)?);
    } else {
        print_table(&apps);
    }
    Ok(())
}

/// `1d`, `3h`, `5m`, `12s`: pm2's uptime column.
pub fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}D", s / 86400),
    }
}

pub fn memory(bytes: u64) -> String {
    if bytes == 0 {
        return "0b".into();
    }
    let mb = bytes as f64 / (1024.0 * 1024.0);
    if mb >= 1024.0 {
        format!("{:.1}gb", mb / 1024.0)
    } else if mb >= 10.0 {
        format!("{mb:.0}mb")
    } else {
        format!("{mb:.1}mb")
    }
}

/// Cut `s` to `width` characters, marking the cut.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

struct Paint {
    on: bool,
}

/// How a state reads at a glance: good, bad, off, or on its way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tone {
    Good,
    Bad,
    Off,
    #[default]
    Moving,
}

impl From<AppState> for Tone {
    fn from(s: AppState) -> Tone {
        match s {
            AppState::Online => Tone::Good,
            AppState::Errored => Tone::Bad,
            AppState::Stopped => Tone::Off,
            AppState::Launching | AppState::Reloading | AppState::Stopping => Tone::Moving,
        }
    }
}

impl From<WorkerState> for Tone {
    fn from(s: WorkerState) -> Tone {
        match s {
            WorkerState::Online => Tone::Good,
            WorkerState::Errored => Tone::Bad,
            WorkerState::Stopped => Tone::Off,
            WorkerState::Launching | WorkerState::Stopping | WorkerState::Waiting => Tone::Moving,
        }
    }
}

impl Paint {
    fn status(&self, status: &str, tone: Tone, width: usize) -> String {
        let text = format!("{status:<width$}");
        if !self.on {
            return text;
        }
        let colour = match tone {
            Tone::Good => "32",
            Tone::Bad => "31",
            Tone::Off => "90",
            Tone::Moving => "33",
        };
        format!("\x1b[{colour}m{text}\x1b[0m")
    }

    fn bold(&self, text: String) -> String {
        if self.on {
            format!("\x1b[1m{text}\x1b[0m")
        } else {
            text
        }
    }
}

/// One line of the table; empty cells are blank.
#[derive(Default)]
struct Row {
    id: String,
    name: String,
    mode: String,
    online: String,
    pid: String,
    uptime: String,
    restarts: String,
    status: String,
    tone: Tone,
    cpu: String,
    mem: String,
}

impl Row {
    /// The cells a worker fills: pid, uptime, restarts, status, cpu, memory.
    fn worker(w: &WorkerInfo, restarts: u64, status: &str, tone: Tone) -> Row {
        let running = w.pid.is_some();
        Row {
            pid: w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            uptime: if running {
                uptime(w.uptime_ms)
            } else {
                "-".into()
            },
            restarts: restarts.to_string(),
            status: status.to_string(),
            tone,
            cpu: format!("{:.0}%", w.cpu_percent),
            mem: memory(w.memory_bytes),
            ..Row::default()
        }
    }

    fn print(&self, paint: &Paint) {
        println!(
            "{:<4}{:<18}{:<8}{:<7}{:<8}{:<7}{:<5}{}{:>5} {:>7}",
            self.id,
            fit(&self.name, 17),
            self.mode,
            self.online,
            self.pid,
            self.uptime,
            self.restarts,
            paint.status(&self.status, self.tone, 10),
            self.cpu,
            self.mem,
        );
    }
}

/// The table: `id name mode online pid uptime ↺ status cpu mem`, 80 columns.
pub fn print_table(apps: &[AppInfo]) {
    let paint = Paint {
        on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    println!(
        "{}",
        paint.bold(format!(
            "{:<4}{:<18}{:<8}{:<7}{:<8}{:<7}{:<5}{:<10}{:>5} {:>7}",
            "id", "name", "mode", "online", "pid", "uptime", "↺", "status", "cpu", "mem"
        ))
    );
    if apps.is_empty() {
        println!("(no apps: start one with `herd start app.js`)");
        return;
    }
    for app in apps {
        // Each slot's restarts once (a successor carries its slot's count too).
        let restarts: u64 = app.current_workers().map(|w| w.restarts).sum();
        let (status, tone) = (app.state.as_str(), Tone::from(app.state));
        // One worker: one line. More: the app's totals, then a line per worker.
        let mut row = match app.workers.as_slice() {
            [w] => Row::worker(w, restarts, status, tone),
            workers => Row {
                restarts: restarts.to_string(),
                status: status.to_string(),
                tone,
                cpu: format!("{:.0}%", workers.iter().map(|w| w.cpu_percent).sum::<f64>()),
                mem: memory(workers.iter().map(|w| w.memory_bytes).sum()),
                ..Row::default()
            },
        };
        row.id = app.id.to_string();
        row.name = app.name.clone();
        row.mode = app.mode.to_string();
        row.online = format!("{}/{}", app.online, app.instances);
        row.print(&paint);
        if app.workers.len() == 1 {
            continue;
        }
        for (i, w) in app.workers.iter().enumerate() {
            let branch = if i + 1 == app.workers.len() {
                "└"
            } else {
                "├"
            };
            let mut row = Row::worker(w, w.restarts, w.state.as_str(), w.state.into());
            row.name = format!(" {branch} {}", worker_name(w));
            row.print(&paint);
        }
    }
}

/// `worker 1`; its successor during a reload `worker 1 new`, a draining
/// worker `worker 1 old`.
pub fn worker_name(w: &WorkerInfo) -> String {
    match w.role {
        WorkerRole::Current => format!("worker {}", w.slot),
        WorkerRole::Successor => format!("worker {} new", w.slot),
        WorkerRole::Draining => format!("worker {} old", w.slot),
    }
}

/// A log path as `show` prints it: per instance, the first instance's file
/// and the rule.
fn log_path(app: &AppInfo, path: &std::path::Path) -> String {
    if app.merge_logs {
        return path.display().to_string();
    }
    let first = herd_protocol::instance_log_path(path, 0);
    if first == path {
        format!("{} (shared by the instances)", path.display())
    } else {
        format!("{} … (one per instance)", first.display())
    }
}

pub fn show(args: ShowArgs) -> anyhow::Result<()> {
    let Response::App { app, def } = client::ask(Request::Show {
        app: args.app,
        show_secrets: args.show_secrets,
    })?
    else {
        anyhow::bail!("the daemon answered show with something else");
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "app": app, "definition": def }))?
        );
        return Ok(());
    }
    let spec = &def.spec;
    let d = herd_engine::describe::duration;
    let mut command = vec![spec.program.display().to_string()];
    command.extend(spec.args.iter().cloned());
    let rows: Vec<(&str, String)> = vec![
        ("name", app.name.clone()),
        ("id", app.id.to_string()),
        ("status", app.state.to_string()),
        ("mode", app.mode.to_string()),
        (
            "workers",
            format!("{}/{} online", app.online, app.instances),
        ),
        ("command", command.join(" ")),
        (
            "cwd",
            spec.cwd
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "listen",
            if app.listen.is_empty() {
                "-".into()
            } else {
                app.listen.join(", ")
            },
        ),
        ("balance", spec.balance.to_string()),
        (
            "restart",
            format!(
                "{:?}, delay {} doubling to {}, stable after {}, errored after {} crashes",
                spec.restart.mode,
                d(spec.restart.restart_delay),
                d(spec.restart.max_restart_delay),
                d(spec.restart.min_uptime),
                spec.restart.max_restarts
            )
            .to_lowercase(),
        ),
        (
            "stop",
            format!(
                "{}, SIGKILL after {}",
                if spec.stop.shutdown_with_message {
                    "message \"shutdown\"".to_string()
                } else {
                    spec.stop.kill_signal.as_str().to_string()
                },
                d(spec.stop.kill_timeout)
            ),
        ),
        (
            "ready",
            if spec.ready.wait_ready {
                format!("when it says so, within {}", d(spec.ready.listen_timeout))
            } else if spec.kind == herd_engine::config::WorkerKind::Node {
                format!("when it listens, within {}", d(spec.ready.listen_timeout))
            } else {
                format!("after {}", d(spec.ready.ready_delay))
            },
        ),
        (
            "max memory",
            def.max_memory_restart
                .map(memory)
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "watch",
            match &spec.watch {
                None => "-".into(),
                Some(w) => {
                    let paths = if w.paths.is_empty() {
                        "its folder".to_string()
                    } else {
                        w.paths
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let ignore = match &w.ignore {
                        None => "dot-names and node_modules".to_string(),
                        Some(i) => i.join(", "),
                    };
                    let mut text = format!("{paths}; ignoring {ignore}");
                    if !w.delay.is_zero() {
                        text.push_str(&format!("; reload {} after a change", d(w.delay)));
                    }
                    text
                }
            },
        ),
        (
            "cron",
            spec.cron_restart
                .as_ref()
                .map(|c| format!("reload at '{c}'"))
                .unwrap_or_else(|| "-".into()),
        ),
        ("out log", log_path(&app, &app.out_log)),
        ("err log", log_path(&app, &app.err_log)),
        (
            "both log",
            def.logs
                .log_file
                .as_deref()
                .map_or_else(|| "-".into(), |p| log_path(&app, p)),
        ),
        ("env", format!("{} variables", spec.env.len())),
    ];
    for (k, v) in rows {
        println!("{k:>11}  {v}");
    }
    for w in &app.workers {
        println!(
            "{:>11}  {} pid {} up {} restarts {} cpu {:.0}% mem {}",
            worker_name(w),
            w.state,
            w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            uptime(w.uptime_ms),
            w.restarts,
            w.cpu_percent,
            memory(w.memory_bytes)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures() {
        assert_eq!(uptime(5_000), "5s");
        assert_eq!(uptime(125_000), "2m");
        assert_eq!(uptime(7_200_000), "2h");
        assert_eq!(memory(41 << 20), "41mb");
        assert_eq!(memory(3 << 19), "1.5mb");
        assert_eq!(fit("a-very-long-application-name", 10), "a-very-lo…");
    }
}
