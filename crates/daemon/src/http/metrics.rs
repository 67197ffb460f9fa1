//! `/metrics`: the apps and their workers in OpenMetrics text, built with
//! `prometheus-client` from a fresh registry at each scrape (the figures
//! live in the apps' supervisors, asked at once; nothing is kept here
//! between scrapes).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use herd_protocol::supervisor::{App, Counters};
use herd_protocol::{AppState, WorkerState};

use super::HttpResponse;
use crate::handlers::Ctx;
use crate::views;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One app's figures at a scrape.
#[derive(Debug, Clone)]
pub struct AppFigures {
    /// As its supervisor answered (or, when it could not, from its
    /// definition with no counters).
    pub app: App,
    /// Its supervisors started again after one died, since this daemon started.
    pub supervisor_restarts: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppStateLabels {
    app: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    app: String,
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    app: String,
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerStateLabels {
    app: String,
    worker: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerPidLabels {
    app: String,
    worker: String,
    pid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    app: String,
    worker: String,
    /// `code` or `signal`.
    cause: String,
    /// The exit code, or the signal's name.
    exit: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// Register a family under `name` and return a handle to fill it.
fn family<L, M>(registry: &mut Registry, name: &str, help: &str) -> Family<L, M>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let f = Family::<L, M>::default();
    registry.register(name, help, f.clone());
    f
}

/// Every app's figures, asked of the supervisors at once.
pub async fn gather(ctx: &Arc<Ctx>) -> Vec<AppFigures> {
    let entries = ctx.registry().all();
    views::gather(entries)
        .await
        .into_iter()
        .map(|seen| {
            let supervisor_restarts = seen.entry.link.restarts();
            let app = match seen.status {
                Ok(status) => status.app,
                Err(_) => App {
                    info: views::from_definition(&seen.entry, &ctx.home),
                    counters: Counters::default(),
                    created_at_ms: 0,
                    slots: Vec::new(),
                    processes: Vec::new(),
                    sockets: Vec::new(),
                },
            };
            AppFigures {
                app,
                supervisor_restarts,
            }
        })
        .collect()
}

pub async fn render(ctx: &Arc<Ctx>) -> HttpResponse {
    let apps = gather(ctx).await;
    let uptime = ctx.started.elapsed().as_secs_f64();
    match encode(&apps, uptime) {
        Ok(text) => HttpResponse::new(200, CONTENT_TYPE, text),
        Err(_) => HttpResponse::error(500, "cannot encode the metrics"),
    }
}

/// The OpenMetrics text for these apps.
pub fn encode(apps: &[AppFigures], daemon_uptime: f64) -> Result<String, std::fmt::Error> {
    let mut r = Registry::default();
    let r = &mut r;

    let daemon_up: FloatGauge = FloatGauge::default();
    r.register(
        "herd_daemon_uptime_seconds",
        "Seconds since the herd daemon started",
        daemon_up.clone(),
    );
    daemon_up.set(daemon_uptime);
    let daemon_apps: Gauge = Gauge::default();
    r.register(
        "herd_daemon_apps",
        "Apps the daemon knows",
        daemon_apps.clone(),
    );
    daemon_apps.set(apps.len() as i64);

    let app_up: Family<AppLabels, Gauge> = family(
        r,
        "herd_app_up",
        "1 when every worker the app wants is online, else 0",
    );
    let app_status: Family<AppStateLabels, Gauge> = family(
        r,
        "herd_app_status",
        "The app's status: 1 for the current one, 0 for the others",
    );
    let app_instances: Family<AppLabels, Gauge> =
        family(r, "herd_app_workers_wanted", "Workers the app wants");
    let app_online: Family<AppLabels, Gauge> = family(
        r,
        "herd_app_workers_ready",
        "Workers of the app online and ready",
    );
    let reloads: Family<AppLabels, Counter> = family(
        r,
        "herd_app_reloads",
        "Rolling reloads and one-worker replacements that ended, aborted ones included",
    );
    let reloads_failed: Family<AppLabels, Counter> = family(
        r,
        "herd_app_reloads_failed",
        "Rolling reloads and replacements that were aborted",
    );
    let supervisor_restarts: Family<AppLabels, Counter> = family(
        r,
        "herd_app_supervisor_restarts",
        "Supervisors of the app started again after one died, since the daemon started",
    );
    let log_bytes: Family<StreamLabels, Counter> = family(
        r,
        "herd_app_log_bytes",
        "Bytes written to the app's log files, by stream (stdout, stderr)",
    );
    let log_lines: Family<StreamLabels, Counter> = family(
        r,
        "herd_app_log_lines",
        "Lines written to the app's log files, by stream (stdout, stderr)",
    );

    let worker_up: Family<WorkerLabels, Gauge> = family(
        r,
        "herd_worker_up",
        "1 when the worker is online and ready, else 0",
    );
    let worker_status: Family<WorkerStateLabels, Gauge> = family(
        r,
        "herd_worker_status",
        "The worker's status: 1 for the current one, 0 for the others",
    );
    let worker_info: Family<WorkerPidLabels, Gauge> = family(
        r,
        "herd_worker_info",
        "The worker's current process id (value always 1)",
    );
    let restarts: Family<WorkerLabels, Counter> = family(
        r,
        "herd_worker_restarts",
        "Workers started for this slot after its first (crashes, reloads, replacements)",
    );
    let exits: Family<ExitLabels, Counter> = family(
        r,
        "herd_worker_exits",
        "Worker processes that ended, by cause: an exit code or a signal",
    );
    let cpu: Family<WorkerLabels, FloatCounter> = family(
        r,
        "herd_worker_cpu_seconds",
        "CPU time (user + system) of the worker's current process",
    );
    let rss: Family<WorkerLabels, Gauge> = family(
        r,
        "herd_worker_resident_memory_bytes",
        "Resident memory of the worker's process",
    );
    let uptime: Family<WorkerLabels, FloatGauge> = family(
        r,
        "herd_worker_uptime_seconds",
        "Seconds since the worker's current process started",
    );
    let handed: Family<WorkerLabels, Counter> = family(
        r,
        "herd_worker_connections_handed_over",
        "Connections herd's round-robin handed to the worker's current process",
    );
    let pending: Family<WorkerLabels, Gauge> = family(
        r,
        "herd_worker_connections_pending",
        "Connections handed to the worker and not answered yet",
    );

    for figures in apps {
        let m = &figures.app;
        let info = &m.info;
        let counters = &m.counters;
        let app = || info.name.clone();
        let a = AppLabels { app: app() };
        app_up
            .get_or_create(&a)
            .set(i64::from(info.state == AppState::Online));
        for s in AppState::ALL {
            app_status
                .get_or_create(&AppStateLabels {
                    app: app(),
                    status: s.to_string(),
                })
                .set(i64::from(info.state == s));
        }
        app_instances.get_or_create(&a).set(info.instances as i64);
        app_online.get_or_create(&a).set(info.online as i64);
        reloads.get_or_create(&a).inc_by(counters.reloads);
        reloads_failed
            .get_or_create(&a)
            .inc_by(counters.reloads_failed);
        supervisor_restarts
            .get_or_create(&a)
            .inc_by(figures.supervisor_restarts);
        for (stream, bytes, lines) in [
            (
                "stdout",
                counters.log_bytes.stdout,
                counters.log_lines.stdout,
            ),
            (
                "stderr",
                counters.log_bytes.stderr,
                counters.log_lines.stderr,
            ),
        ] {
            let l = StreamLabels {
                app: app(),
                stream: stream.to_string(),
            };
            log_bytes.get_or_create(&l).inc_by(bytes);
            log_lines.get_or_create(&l).inc_by(lines);
        }
        // One series per slot: its current worker.
        for w in info.current_workers() {
            let l = WorkerLabels {
                app: app(),
                worker: w.slot.to_string(),
            };
            worker_up
                .get_or_create(&l)
                .set(i64::from(w.state == WorkerState::Online));
            for s in WorkerState::ALL {
                worker_status
                    .get_or_create(&WorkerStateLabels {
                        app: app(),
                        worker: w.slot.to_string(),
                        status: s.to_string(),
                    })
                    .set(i64::from(w.state == s));
            }
            restarts.get_or_create(&l).inc_by(w.restarts);
            uptime.get_or_create(&l).set(w.uptime_ms as f64 / 1000.0);
            rss.get_or_create(&l).set(w.memory_bytes as i64);
            let Some(pid) = w.pid else {
                continue;
            };
            worker_info
                .get_or_create(&WorkerPidLabels {
                    app: app(),
                    worker: w.slot.to_string(),
                    pid: pid.to_string(),
                })
                .set(1);
            if let Some(p) = m.process(pid) {
                cpu.get_or_create(&l).inc_by(p.cpu_seconds);
                if let Some(handed_over) = p.handed_over {
                    handed.get_or_create(&l).inc_by(handed_over);
                }
                if let Some(n) = p.pending_connections {
                    pending.get_or_create(&l).set(n as i64);
                }
            }
        }
        for e in &counters.exits {
            exits
                .get_or_create(&ExitLabels {
                    app: app(),
                    worker: e.slot.to_string(),
                    cause: e.cause.as_str().to_string(),
                    exit: e.what.clone(),
                })
                .inc_by(e.count);
        }
    }

    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, r)?;
    Ok(sorted_samples(&out))
}

/// The same text with each family's samples in a stable order (by app, then
/// worker, as the labels read): a family keeps its series in a hash map.
fn sorted_samples(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut samples: Vec<&str> = Vec::new();
    let flush = |samples: &mut Vec<&str>, out: &mut String| {
        samples.sort_by_cached_key(|line| natural(line));
        for line in samples.drain(..) {
            out.push_str(line);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut samples, &mut out);
            out.push_str(line);
            out.push('\n');
        } else {
            samples.push(line);
        }
    }
    flush(&mut samples, &mut out);
    out
}

/// A sort key where runs of digits compare as numbers (worker 2 before 10).
fn natural(line: &str) -> Vec<(String, u64)> {
    let mut key = Vec::new();
    let mut text = String::new();
    let mut digits = String::new();
    for c in line.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            if !digits.is_empty() {
                key.push((
                    std::mem::take(&mut text),
                    digits.parse().unwrap_or(u64::MAX),
                ));
                digits.clear();
            }
            text.push(c);
        }
    }
    key.push((text, digits.parse().unwrap_or(0)));
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_engine::config::ExecMode;
    use herd_protocol::supervisor::{ExitCause, ExitCount, PerStream, Process};
    use herd_protocol::{AppInfo, WorkerInfo, WorkerRole};

    fn worker(slot: usize, pid: Option<u32>, state: WorkerState, role: WorkerRole) -> WorkerInfo {
        WorkerInfo {
            slot,
            pid,
            state,
            role,
            restarts: 2,
            uptime_ms: 1500,
            cpu_percent: 0.0,
            memory_bytes: 4096,
        }
    }

    #[test]
    fn one_series_per_slot_with_counters_and_states() {
        let counters = Counters {
            exits: vec![ExitCount {
                slot: 1,
                cause: ExitCause::Signal,
                what: "SIGKILL".into(),
                count: 2,
            }],
            reloads: 3,
            reloads_failed: 1,
            log_bytes: PerStream {
                stdout: 100,
                stderr: 7,
            },
            log_lines: PerStream {
                stdout: 4,
                stderr: 1,
            },
        };
        let app = App {
            info: AppInfo {
                name: "api".into(),
                id: 0,
                mode: ExecMode::Cluster,
                state: AppState::Reloading,
                instances: 2,
                online: 2,
                listen: vec![],
                out_log: "/o".into(),
                err_log: "/e".into(),
                merge_logs: true,
                workers: vec![
                    worker(0, Some(10), WorkerState::Online, WorkerRole::Current),
                    // Slot 0's successor during the reload: not a second series.
                    worker(0, Some(12), WorkerState::Launching, WorkerRole::Successor),
                    worker(1, Some(11), WorkerState::Online, WorkerRole::Current),
                ],
            },
            counters,
            created_at_ms: 0,
            slots: Vec::new(),
            processes: vec![
                Process {
                    pid: 10,
                    cpu_seconds: 0.5,
                    handed_over: None,
                    pending_connections: None,
                },
                Process {
                    pid: 11,
                    cpu_seconds: 0.0,
                    handed_over: Some(5),
                    pending_connections: Some(1),
                },
            ],
            sockets: Vec::new(),
        };
        let figures = AppFigures {
            app,
            supervisor_restarts: 1,
        };
        let text = encode(&[figures], 2.0).unwrap();
        for line in [
            "herd_app_status{app=\"api\",status=\"reloading\"} 1",
            "herd_app_status{app=\"api\",status=\"online\"} 0",
            "herd_app_reloads_total{app=\"api\"} 3",
            "herd_app_reloads_failed_total{app=\"api\"} 1",
            "herd_app_supervisor_restarts_total{app=\"api\"} 1",
            "herd_app_log_bytes_total{app=\"api\",stream=\"stdout\"} 100",
            "herd_app_log_lines_total{app=\"api\",stream=\"stderr\"} 1",
            "herd_worker_info{app=\"api\",worker=\"0\",pid=\"10\"} 1",
            "herd_worker_restarts_total{app=\"api\",worker=\"1\"} 2",
            "herd_worker_exits_total{app=\"api\",worker=\"1\",cause=\"signal\",exit=\"SIGKILL\"} 2",
            "herd_worker_cpu_seconds_total{app=\"api\",worker=\"0\"} 0.5",
            "herd_worker_uptime_seconds{app=\"api\",worker=\"0\"} 1.5",
            "herd_worker_connections_handed_over_total{app=\"api\",worker=\"1\"} 5",
            "herd_worker_connections_pending{app=\"api\",worker=\"1\"} 1",
            "herd_daemon_apps 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(!text.contains("pid=\"12\""), "{text}");
        let restarts: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("herd_worker_restarts_total"))
            .collect();
        assert_eq!(
            restarts,
            [
                "herd_worker_restarts_total{app=\"api\",worker=\"0\"} 2",
                "herd_worker_restarts_total{app=\"api\",worker=\"1\"} 2"
            ]
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
