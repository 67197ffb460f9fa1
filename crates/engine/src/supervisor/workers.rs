//! An app's worker processes: starting one (its environment, its fds, its
//! channel), knowing its pid from the fork on, killing it, and reaping it.
//!
//! Owns (plain data, [`Workers`]): a record per worker process herd
//! started and has not reaped ([`WorkerRecord`]: its slot, its pid — which
//! is also its process group —, whether its exec is still under way, the
//! numbers of the fds herd holds to it), and the `READY=1` notifications
//! that came from pids herd did not know yet. When a worker started, whether
//! it is ready or stopping, and what follows its exit is the machine's
//! business; its channel conversation is the cluster's; its output pumps and
//! channel tasks are runtime wiring ([`WorkerWiring`]).

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::ipc::{Outgoing, ReaderEnd};
use super::listeners::Listeners;
use super::output::Pump;
use crate::clock::MonoTime;
use crate::config::{AppSpec, ExecMode, WorkerKind};
use crate::exit::ExitStatus;
use crate::machine::{Slot, WorkerId};
use crate::os::channel;
use crate::os::process;
use crate::os::spawn::SpawnSpec;

/// How long, and how many, `READY=1` notifications from not-yet-known pids
/// are kept.
const UNCLAIMED_READY_FOR: Duration = Duration::from_secs(10);
const UNCLAIMED_READY_MAX: usize = 64;

/// Is this a variable herd sets for each worker (so it is never passed on
/// from herd's own environment, or from a CLI's)?
pub fn is_worker_variable(key: &str) -> bool {
    const OURS: &[&str] = &[
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "NODE_CHANNEL_FD",
        "NODE_CHANNEL_SERIALIZATION_MODE",
        "NODE_UNIQUE_ID",
        "NODE_APP_INSTANCE",
    ];
    OURS.contains(&key) || key.starts_with("HERD_")
}

/// herd's own environment minus what it sets for each worker, and minus
/// the allocator tunables herd added for itself
/// ([`crate::memory::tunables_for_workers`]).
pub(crate) fn base_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| !is_worker_variable(&k.to_string_lossy()))
        .filter_map(|(k, v)| {
            if k == crate::memory::GLIBC_TUNABLES {
                crate::memory::tunables_for_workers(&v).map(|v| (k, v))
            } else {
                Some((k, v))
            }
        })
        .collect()
}

/// Where a worker process is, as far as starting and reaping it go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Process {
    /// Between the request to fork and a successful exec.
    Spawning {
        /// Known once the fork returned; from then on the child is ours to kill.
        pid: Option<i32>,
        /// A kill was asked for before its exec was seen.
        kill: bool,
        /// It said `READY=1` before herd saw its exec succeed.
        ready_early: bool,
    },
    /// Running (or exited and not reaped yet).
    Running {
        pid: i32,
        /// herd's ends of it: the channel, and the read ends of its stdout
        /// and stderr (owned by the wiring; the numbers let a new herd binary
        /// take them over).
        channel_fd: RawFd,
        output_fds: [RawFd; 2],
    },
}

/// One worker process herd started and has not reaped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerRecord {
    pub(crate) slot: Slot,
    pub(crate) process: Process,
}

/// A spawn prepared up to the fork: everything that can fail without a
/// process has been done.
pub(crate) struct SpawnPlan {
    pub(crate) spec: SpawnSpec,
    /// Our copies of the fds the child inherits, open until the fork.
    pub(crate) keep: Vec<OwnedFd>,
    /// herd's end of the worker's channel.
    pub(crate) channel: OwnedFd,
}

/// What a worker's `READY=1` means.
pub(crate) enum Notified {
    /// A running worker is ready.
    Ready(WorkerId),
    /// Remembered for later: the worker's exec (or even its fork) was not
    /// seen yet.
    Early,
}

/// The runtime wiring of one running worker: its writer's queue and task,
/// its output pumps, and its channel reader (which runs on its own until
/// the channel ends, or until it is stopped for an in-place upgrade).
pub(crate) struct WorkerWiring {
    pub(crate) outbox: mpsc::UnboundedSender<Outgoing>,
    /// Messages queued in `outbox` and not written yet.
    pub(crate) unsent: Arc<AtomicUsize>,
    pub(crate) writer: tokio::task::JoinHandle<()>,
    pub(crate) reader: tokio::task::JoinHandle<ReaderEnd>,
    pub(crate) stop_reader: oneshot::Sender<()>,
    pub(crate) pumps: [Pump; 2],
}

impl WorkerWiring {
    /// Queue a message for the worker's writer.
    pub(crate) fn send(&self, out: Outgoing) {
        self.unsent.fetch_add(1, Ordering::Relaxed);
        if self.outbox.send(out).is_err() {
            self.unsent.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Is everything queued for the worker written?
    pub(crate) fn all_sent(&self) -> bool {
        self.unsent.load(Ordering::Relaxed) == 0 || self.writer.is_finished()
    }
}

/// The app's worker processes.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Workers {
    records: BTreeMap<WorkerId, WorkerRecord>,
    /// `READY=1` from a process group herd does not know yet (the worker was
    /// faster than the news of its fork): claimed by [`Workers::forked`],
    /// forgotten after [`UNCLAIMED_READY_FOR`]; at most
    /// [`UNCLAIMED_READY_MAX`].
    unclaimed_ready: VecDeque<(i32, MonoTime)>,
}

/// Everything a worker gets: its environment, its fds and its argv.
pub(crate) struct WorkerStart<'a> {
    pub(crate) spec: &'a AppSpec,
    /// What every worker's environment starts from ([`base_env`], or
    /// nothing when the app was started with `inherit_env` off).
    pub(crate) base_env: &'a [(OsString, OsString)],
    pub(crate) slot: Slot,
    pub(crate) worker: WorkerId,
    /// The app's slot count now (`HERD_INSTANCES`).
    pub(crate) slots: usize,
    /// `NOTIFY_SOCKET`.
    pub(crate) notify_socket: &'a str,
    /// herd accepts on the app's own listeners and hands the connections
    /// over: the worker inherits none of them.
    pub(crate) listener_round_robin: bool,
}

impl WorkerStart<'_> {
    /// Prepare the spawn up to the fork.
    pub(crate) fn plan(&self, listeners: &mut Listeners) -> io::Result<SpawnPlan> {
        let mut keep = if self.listener_round_robin {
            Vec::new()
        } else {
            listeners.inherit(self.slot)?
        };
        let listen_fds = keep.len();
        let (ours, theirs) = channel::pair()?;
        let channel_fd = 3 + keep.len();
        keep.push(theirs);
        let fds: Vec<RawFd> = keep.iter().map(|fd| fd.as_raw_fd()).collect();
        let names: Vec<&str> = listeners
            .of_definition()
            .map(|(_, l)| l.name.as_str())
            .collect();
        let env = self.env(listen_fds, channel_fd, &names);
        let spec = self.spec;
        let mut argv: Vec<OsString> = vec![spec.program.clone().into_os_string()];
        argv.extend(spec.args.iter().map(OsString::from));
        Ok(SpawnPlan {
            spec: SpawnSpec {
                program: spec.program.clone(),
                argv,
                env,
                cwd: spec.cwd.clone(),
                fds,
                set_listen_pid: listen_fds > 0,
            },
            keep,
            channel: ours,
        })
    }

    /// The worker's environment: the base (herd's own, or none when the
    /// definition gives the whole of it), the definition's, then what herd
    /// sets for each worker — pm2's variables among them (`name`, `pm_id`,
    /// the instance variable, `increment_var`). A later entry wins.
    fn env(
        &self,
        listen_fds: usize,
        channel_fd: usize,
        names: &[&str],
    ) -> Vec<(OsString, OsString)> {
        let spec = self.spec;
        let slot = self.slot.to_string();
        let increment = spec.increment_var.as_ref().map(|var| {
            (
                var,
                increment_from(self.lookup(var).as_deref()) + self.slot as f64,
            )
        });
        let mut env = self.base_env.to_vec();
        let mut set = |k: &str, v: String| env.push((k.into(), v.into()));
        for (k, v) in &spec.env {
            set(k, v.clone());
        }
        // pm2's: the app's name and id, and its instance number in
        // `instance_var` instead of NODE_APP_INSTANCE when one is given.
        set("name", spec.name.clone());
        set("pm_id", spec.app_id.unwrap_or(0).to_string());
        let instance_var = spec.instance_var.as_deref().unwrap_or("NODE_APP_INSTANCE");
        set(instance_var, slot.clone());
        if let Some((var, value)) = increment {
            set(var, js_number_text(value));
        }
        set("HERD_WORKER_ID", slot);
        set("HERD_INSTANCES", self.slots.to_string());
        set("HERD_APP_NAME", spec.name.clone());
        set("NOTIFY_SOCKET", self.notify_socket.to_string());
        set("HERD_CHANNEL_FD", channel_fd.to_string());
        if listen_fds > 0 {
            set("LISTEN_FDS", listen_fds.to_string());
            set("LISTEN_FDNAMES", names.join(":"));
        }
        if self.listener_round_robin {
            set("HERD_ROUND_ROBIN", names.join(":"));
        }
        if spec.kind == WorkerKind::Node {
            // `process.send` reaches herd in both modes, as under pm2.
            set("NODE_CHANNEL_FD", channel_fd.to_string());
            set("NODE_CHANNEL_SERIALIZATION_MODE", "json".to_string());
            // Cluster mode: a cluster worker of herd's. Node's
            // cluster.worker.id: unique, from 1, like Node's primary. Fork
            // mode: a plain process (`cluster.isPrimary`), which may
            // cluster itself.
            if spec.exec_mode == ExecMode::Cluster {
                set("NODE_UNIQUE_ID", (self.worker.0 + 1).to_string());
            }
        }
        last_wins(env)
    }

    /// A variable's value as the worker would get it from the definition
    /// or the base environment (the last one given wins).
    fn lookup(&self, var: &str) -> Option<String> {
        let of_spec = self.spec.env.iter().rev().find(|(k, _)| k == var);
        match of_spec {
            Some((_, v)) => Some(v.clone()),
            None => self
                .base_env
                .iter()
                .rev()
                .find(|(k, _)| k == var)
                .map(|(_, v)| v.to_string_lossy().into_owned()),
        }
    }
}

/// Each variable once, with the value given last: a program's `getenv`
/// would take the first of two.
fn last_wins(env: Vec<(OsString, OsString)>) -> Vec<(OsString, OsString)> {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<(OsString, OsString)> = env
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    kept.reverse();
    kept
}

/// The number `increment_var` starts from, as pm2 reads it
/// (`Number(value) || 0`): a decimal number (surrounding blanks allowed,
/// empty is 0), `0x`/`0o`/`0b` integers; anything else is 0.
fn increment_from(value: Option<&str>) -> f64 {
    let Some(text) = value.map(str::trim) else {
        return 0.0;
    };
    let radix = |prefix: [&str; 2], radix| {
        prefix
            .iter()
            .find_map(|p| text.strip_prefix(p))
            .and_then(|digits| u64::from_str_radix(digits, radix).ok())
            .map(|n| n as f64)
    };
    let number = radix(["0x", "0X"], 16)
        .or_else(|| radix(["0o", "0O"], 8))
        .or_else(|| radix(["0b", "0B"], 2))
        .or_else(|| {
            // Rust's float syntax without its words (`inf`, `nan`), as JS's.
            let plain = text
                .chars()
                .all(|c| c.is_ascii_digit() || "+-.eE".contains(c));
            plain.then(|| text.parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0);
    if number.is_finite() {
        number
    } else {
        0.0
    }
}

/// A number as JavaScript prints it, for the common cases: `3000`, `1.5`.
fn js_number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

impl Workers {
    /// The spawn of `worker` for `slot` is under way.
    pub(crate) fn spawning(&mut self, worker: WorkerId, slot: Slot) {
        self.records.insert(
            worker,
            WorkerRecord {
                slot,
                process: Process::Spawning {
                    pid: None,
                    kill: false,
                    ready_early: false,
                },
            },
        );
    }

    /// The fork of `worker` returned: the child exists. Kills it at once if
    /// a kill was asked for meanwhile.
    pub(crate) fn forked(&mut self, worker: WorkerId, pid: Pid, now: MonoTime) {
        let early = self.claim_ready(pid, now);
        if let Some(WorkerRecord {
            process:
                Process::Spawning {
                    pid: known,
                    kill,
                    ready_early,
                },
            ..
        }) = self.records.get_mut(&worker)
        {
            *known = Some(pid.as_raw());
            *ready_early |= early;
            if *kill {
                kill_spawning(pid);
            }
        }
    }

    /// The spawn of `worker` ended (its exec succeeded, or it failed): its
    /// slot, and whether a kill was asked for and `READY=1` came meanwhile.
    /// The record is gone until [`Workers::running`].
    pub(crate) fn spawned(&mut self, worker: WorkerId) -> Option<(Slot, bool, bool)> {
        match self.records.get(&worker)?.process {
            Process::Spawning {
                kill, ready_early, ..
            } => {
                let slot = self.records.remove(&worker)?.slot;
                Some((slot, kill, ready_early))
            }
            Process::Running { .. } => None,
        }
    }

    /// `worker` runs as `pid`, and herd holds these fds to it.
    pub(crate) fn running(
        &mut self,
        worker: WorkerId,
        slot: Slot,
        pid: Pid,
        channel_fd: RawFd,
        output_fds: [RawFd; 2],
    ) {
        self.records.insert(
            worker,
            WorkerRecord {
                slot,
                process: Process::Running {
                    pid: pid.as_raw(),
                    channel_fd,
                    output_fds,
                },
            },
        );
    }

    pub(crate) fn remove(&mut self, worker: WorkerId) {
        self.records.remove(&worker);
    }

    /// Is a spawn under way (between the request to fork and the news of
    /// its exec)?
    pub(crate) fn any_spawning(&self) -> bool {
        self.records
            .values()
            .any(|r| matches!(r.process, Process::Spawning { .. }))
    }

    /// Every running worker with its slot, pid and the fds herd holds to it.
    pub(crate) fn running_fds(&self) -> Vec<(WorkerId, Slot, Pid, RawFd, [RawFd; 2])> {
        self.records
            .iter()
            .filter_map(|(w, r)| match r.process {
                Process::Running {
                    pid,
                    channel_fd,
                    output_fds,
                } => Some((*w, r.slot, Pid::from_raw(pid), channel_fd, output_fds)),
                Process::Spawning { .. } => None,
            })
            .collect()
    }

    /// A running worker's slot and pid.
    pub(crate) fn get_running(&self, worker: WorkerId) -> Option<(Slot, Pid)> {
        match self.records.get(&worker)? {
            WorkerRecord {
                slot,
                process: Process::Running { pid, .. },
            } => Some((*slot, Pid::from_raw(*pid))),
            _ => None,
        }
    }

    /// Every running worker with its slot and pid.
    pub(crate) fn running_workers(&self) -> impl Iterator<Item = (WorkerId, Slot, Pid)> + '_ {
        self.records.iter().filter_map(|(w, r)| match r.process {
            Process::Running { pid, .. } => Some((*w, r.slot, Pid::from_raw(pid))),
            Process::Spawning { .. } => None,
        })
    }

    /// SIGKILL the worker's process group; a worker whose exec was not seen
    /// yet is killed as soon as its pid is known.
    pub(crate) fn kill(&mut self, worker: WorkerId) {
        match self.records.get_mut(&worker).map(|r| &mut r.process) {
            Some(Process::Running { pid, .. }) => {
                let _ = process::signal_group(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            Some(Process::Spawning { pid, kill, .. }) => {
                *kill = true;
                if let Some(pid) = pid {
                    kill_spawning(Pid::from_raw(*pid));
                }
            }
            None => {}
        }
    }

    /// The running workers that have exited, each reaped (with whatever
    /// was left of its process group), with how it ended; a worker herd
    /// lost track of ends with an error.
    pub(crate) fn reap(&self) -> Vec<(WorkerId, Pid, io::Result<ExitStatus>)> {
        let mut ended = Vec::new();
        for (worker, _, pid) in self.running_workers() {
            match process::try_reap(pid) {
                Ok(None) => {}
                Ok(Some(status)) => ended.push((worker, pid, Ok(status))),
                Err(e) => ended.push((worker, pid, Err(e))),
            }
        }
        ended
    }

    /// `pid` sent `READY=1`: which worker is ready (the worker itself or a
    /// process in its group), or it is remembered until herd knows it.
    pub(crate) fn notified_ready(&mut self, pid: Pid, now: MonoTime) -> Notified {
        let group = nix::unistd::getpgid(Some(pid)).ok();
        let of = |p: i32| p == pid.as_raw() || Some(p) == group.map(Pid::as_raw);
        if let Some((worker, _, _)) = self.running_workers().find(|(_, _, p)| of(p.as_raw())) {
            return Notified::Ready(worker);
        }
        let spawning = self
            .records
            .values_mut()
            .find_map(|r| match &mut r.process {
                Process::Spawning {
                    pid: Some(p),
                    ready_early,
                    ..
                } if of(*p) => Some(ready_early),
                _ => None,
            });
        if let Some(ready_early) = spawning {
            // Faster than herd noticed its exec: remembered for then.
            *ready_early = true;
            return Notified::Early;
        }
        // Faster than herd learned its pid: kept for `forked`.
        self.forget_old_ready(now);
        if self.unclaimed_ready.len() >= UNCLAIMED_READY_MAX {
            self.unclaimed_ready.pop_front();
        }
        // By its group: a worker leads its own (pgid = pid).
        let group = group.unwrap_or(pid);
        self.unclaimed_ready.push_back((group.as_raw(), now));
        Notified::Early
    }

    fn forget_old_ready(&mut self, now: MonoTime) {
        self.unclaimed_ready
            .retain(|(_, at)| now.saturating_duration_since(*at) < UNCLAIMED_READY_FOR);
    }

    /// Did the child `pid` (or a process in its group) say `READY=1`
    /// before herd knew it?
    fn claim_ready(&mut self, pid: Pid, now: MonoTime) -> bool {
        self.forget_old_ready(now);
        match self
            .unclaimed_ready
            .iter()
            .position(|(p, _)| *p == pid.as_raw())
        {
            Some(i) => {
                self.unclaimed_ready.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Kill a child whose exec herd has not seen yet: the process itself (it may
/// not have made its own process group yet) and its group.
fn kill_spawning(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    let _ = process::signal_group(pid, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(start: &WorkerStart) -> impl Fn(&str) -> Option<String> {
        let env = start.env(1, 4, &["web"]);
        let keys: Vec<&OsString> = env.iter().map(|(k, _)| k).collect();
        let unique: std::collections::HashSet<&&OsString> = keys.iter().collect();
        assert_eq!(keys.len(), unique.len(), "each variable once: {env:?}");
        move |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        }
    }

    fn start_of(spec: &AppSpec, slot: Slot) -> WorkerStart<'_> {
        WorkerStart {
            spec,
            base_env: &[],
            slot,
            worker: WorkerId(6),
            slots: 4,
            notify_socket: "@herd/1/0",
            listener_round_robin: false,
        }
    }

    #[test]
    fn a_worker_gets_its_slot_and_the_cluster_variables() {
        let mut spec = AppSpec::new("web", "/bin/true");
        spec.kind = WorkerKind::Node;
        spec.env.push(("PORT".into(), "8000".into()));
        let base = [("HOME".into(), "/root".into()), ("PORT".into(), "1".into())];
        let start = WorkerStart {
            base_env: &base,
            slot: 2,
            ..start_of(&spec, 2)
        };
        let get = env_of(&start);
        assert_eq!(get("HOME").as_deref(), Some("/root"));
        assert_eq!(
            get("PORT").as_deref(),
            Some("8000"),
            "the definition's wins"
        );
        assert_eq!(get("HERD_WORKER_ID").as_deref(), Some("2"));
        assert_eq!(get("NODE_APP_INSTANCE").as_deref(), Some("2"));
        assert_eq!(get("HERD_INSTANCES").as_deref(), Some("4"));
        assert_eq!(get("LISTEN_FDS").as_deref(), Some("1"));
        assert_eq!(get("LISTEN_FDNAMES").as_deref(), Some("web"));
        assert_eq!(get("NODE_CHANNEL_FD").as_deref(), Some("4"));
        assert_eq!(
            get("NODE_UNIQUE_ID").as_deref(),
            Some("7"),
            "from 1, never reused"
        );
        assert_eq!(get("HERD_ROUND_ROBIN"), None);
    }

    #[test]
    fn a_fork_mode_node_worker_is_no_cluster_worker_but_keeps_its_channel() {
        let mut spec = AppSpec::new("web", "/usr/bin/node");
        spec.kind = WorkerKind::Node;
        spec.exec_mode = ExecMode::Fork;
        let get = env_of(&start_of(&spec, 0));
        assert_eq!(get("NODE_UNIQUE_ID"), None, "cluster.isPrimary in the app");
        assert_eq!(
            get("NODE_CHANNEL_FD").as_deref(),
            Some("4"),
            "process.send works"
        );
        assert_eq!(
            get("NODE_CHANNEL_SERIALIZATION_MODE").as_deref(),
            Some("json")
        );
    }

    #[test]
    fn pm2s_variables_name_the_app_and_number_the_instances() {
        let mut spec = AppSpec::new("api", "/bin/true");
        spec.app_id = Some(7);
        let get = env_of(&start_of(&spec, 1));
        assert_eq!(get("name").as_deref(), Some("api"));
        assert_eq!(get("pm_id").as_deref(), Some("7"));
        assert_eq!(get("NODE_APP_INSTANCE").as_deref(), Some("1"));
        // instance_var replaces NODE_APP_INSTANCE, as under pm2.
        spec.instance_var = Some("INSTANCE_ID".into());
        spec.app_id = None;
        let get = env_of(&start_of(&spec, 3));
        assert_eq!(get("INSTANCE_ID").as_deref(), Some("3"));
        assert_eq!(get("NODE_APP_INSTANCE"), None);
        assert_eq!(get("pm_id").as_deref(), Some("0"), "herd run: 0");
    }

    #[test]
    fn increment_var_counts_up_from_the_apps_value_per_slot() {
        let mut spec = AppSpec::new("api", "/bin/true");
        spec.increment_var = Some("PORT".into());
        spec.env.push(("PORT".into(), "3000".into()));
        let ports: Vec<Option<String>> = (0..3)
            .map(|slot| env_of(&start_of(&spec, slot))("PORT"))
            .collect();
        assert_eq!(
            ports,
            vec![
                Some("3000".into()),
                Some("3001".into()),
                Some("3002".into())
            ]
        );
        // From the base environment when the definition has none; else 0.
        spec.env.clear();
        let base = [("PORT".into(), "8080".into())];
        let start = WorkerStart {
            base_env: &base,
            ..start_of(&spec, 1)
        };
        assert_eq!(env_of(&start)("PORT").as_deref(), Some("8081"));
        spec.increment_var = Some("SHARD".into());
        assert_eq!(env_of(&start_of(&spec, 2))("SHARD").as_deref(), Some("2"));
    }

    #[test]
    fn increment_var_reads_its_start_as_javascripts_number_does() {
        // (value, Number(value) || 0)
        let table = [
            (Some("3000"), 3000.0),
            (Some(" 42 "), 42.0),
            (Some(""), 0.0),
            (Some("abc"), 0.0),
            (Some("0x10"), 16.0),
            (Some("1e3"), 1000.0),
            (Some("2.5"), 2.5),
            (Some("-7"), -7.0),
            (Some("12px"), 0.0),
            (Some("inf"), 0.0),
            (None, 0.0),
        ];
        for (value, number) in table {
            assert_eq!(increment_from(value), number, "{value:?}");
        }
        assert_eq!(js_number_text(3001.0), "3001");
        assert_eq!(js_number_text(3.5), "3.5");
        assert_eq!(js_number_text(-6.0), "-6");
    }

    #[test]
    fn herds_own_variables_are_never_passed_on() {
        assert!(is_worker_variable("HERD_WORKER_ID"));
        assert!(is_worker_variable("LISTEN_FDS"));
        assert!(is_worker_variable("NODE_APP_INSTANCE"));
        assert!(!is_worker_variable("PATH"));
    }

    #[test]
    fn a_ready_before_the_fork_is_known_is_claimed_by_the_fork() {
        let now = MonoTime::now();
        let mut workers = Workers::default();
        workers.spawning(WorkerId(0), 0);
        // Our own pid stands in for the child's: it leads no known worker.
        let pid = nix::unistd::getpid();
        assert!(matches!(workers.notified_ready(pid, now), Notified::Early));
        let group = nix::unistd::getpgid(Some(pid)).unwrap();
        workers.forked(WorkerId(0), group, now);
        assert_eq!(workers.spawned(WorkerId(0)), Some((0, false, true)));
    }
}
