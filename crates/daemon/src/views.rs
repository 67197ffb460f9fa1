//! The apps as they are now, read from their supervisors: every app's
//! status asked at once, each within [`crate::link::STATUS_DEADLINE`], so one
//! slow or dead supervisor delays nobody else's line in `list`, `/metrics`,
//! `/readyz` or the status page. An app whose supervisor cannot answer is
//! shown from its definition: `launching` while its supervisor is being
//! started again, `errored` when the daemon cannot talk to it.

use herd_engine::config::Instances;
use herd_protocol::supervisor::Status;
use herd_protocol::{AppInfo, AppState, WorkerInfo, WorkerRole, WorkerState};

use crate::link::{LinkError, State};
use crate::registry::Entry;
use crate::Home;

/// One app and what its supervisor said.
pub struct Seen {
    pub entry: Entry,
    pub status: Result<Status, LinkError>,
}

impl Seen {
    /// The app as `herd list` shows it.
    pub fn info(&self, home: &Home) -> AppInfo {
        match &self.status {
            Ok(status) => status.app.info.clone(),
            Err(_) => from_definition(&self.entry, home),
        }
    }
}

/// Ask every app's supervisor for its status, at once; in the entries' order.
pub async fn gather(entries: Vec<Entry>) -> Vec<Seen> {
    let tasks: Vec<_> = entries
        .into_iter()
        .map(|entry| {
            tokio::spawn(async move {
                let status = entry.link.status().await;
                Seen { entry, status }
            })
        })
        .collect();
    let mut seen = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(s) = task.await {
            seen.push(s);
        }
    }
    seen
}

/// The app as its definition says, for when its supervisor cannot answer.
pub fn from_definition(entry: &Entry, home: &Home) -> AppInfo {
    let def = &entry.def;
    let spec = &def.spec;
    let instances = if def.instances_max {
        Instances::Max.resolve()
    } else {
        spec.instances
    };
    let (state, workers) = match entry.link.state() {
        State::Connecting | State::Restarting { .. } | State::Up { .. } => {
            (AppState::Launching, WorkerState::Waiting)
        }
        State::Incompatible { .. } | State::Gone => (AppState::Errored, WorkerState::Errored),
    };
    let log_paths = herd_supervisor::logs::paths(def, home);
    AppInfo {
        name: entry.name.clone(),
        id: entry.id,
        mode: spec.exec_mode,
        state,
        instances,
        online: 0,
        listen: spec.listeners.iter().map(|l| l.addr.to_string()).collect(),
        out_log: log_paths.out,
        err_log: log_paths.err,
        merge_logs: def.logs.merge_logs,
        workers: (0..instances)
            .map(|slot| WorkerInfo {
                slot,
                pid: None,
                state: workers,
                role: WorkerRole::Current,
                restarts: 0,
                uptime_ms: 0,
                cpu_percent: 0.0,
                memory_bytes: 0,
            })
            .collect(),
    }
}
