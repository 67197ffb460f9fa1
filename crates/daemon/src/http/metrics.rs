//! `/metrics`: the apps and their workers in OpenMetrics text, built with
//! `prometheus-client` from a fresh registry at each scrape (the figures
//! live in the app actors; nothing is kept here between scrapes).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::HttpResponse;
use crate::app::AppMetrics;
use crate::handlers::Ctx;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The states `herd_app_status` and `herd_worker_status` enumerate.
const APP_STATES: [&str; 6] = [
    "online",
    "launching",
    "reloading",
    "stopping",
    "stopped",
    "errored",
];
const WORKER_STATES: [&str; 6] = [
    "online",
    "launching",
    "waiting",
    "stopping",
    "stopped",
    "errored",
];

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

/// Every app's figures, asked of the actors at once.
pub async fn gather(ctx: &Arc<Ctx>) -> Vec<AppMetrics> {
    let entries = ctx.registry.lock().unwrap_or_else(|e| e.into_inner()).all();
    let tasks: Vec<_> = entries
        .into_iter()
        .map(|e| tokio::spawn(async move { e.app.metrics().await }))
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(Some(m)) = t.await {
            out.push(m);
        }
    }
    out
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
pub fn encode(apps: &[AppMetrics], daemon_uptime: f64) -> Result<String, std::fmt::Error> {
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

    for m in apps {
        let info = &m.info;
        let app = || info.name.clone();
        let a = AppLabels { app: app() };
        app_up
            .get_or_create(&a)
            .set(i64::from(info.status == "online"));
        for s in APP_STATES {
            app_status
                .get_or_create(&AppStateLabels {
                    app: app(),
                    status: s.to_string(),
                })
                .set(i64::from(info.status == s));
        }
        app_instances.get_or_create(&a).set(info.instances as i64);
        app_online.get_or_create(&a).set(info.online as i64);
        reloads.get_or_create(&a).inc_by(m.counters.reloads);
        reloads_failed
            .get_or_create(&a)
            .inc_by(m.counters.reloads_failed);
        for (i, stream) in ["stdout", "stderr"].into_iter().enumerate() {
            let l = StreamLabels {
                app: app(),
                stream: stream.to_string(),
            };
            log_bytes.get_or_create(&l).inc_by(m.counters.log_bytes[i]);
            log_lines.get_or_create(&l).inc_by(m.counters.log_lines[i]);
        }
        // One series per slot: its current worker (the first entry listed
        // for the slot; a reload's replacement and draining workers follow).
        let mut seen = Vec::new();
        for w in &info.workers {
            if seen.contains(&w.id) {
                continue;
            }
            seen.push(w.id);
            let l = WorkerLabels {
                app: app(),
                worker: w.id.to_string(),
            };
            worker_up
                .get_or_create(&l)
                .set(i64::from(w.status == "online"));
            for s in WORKER_STATES {
                worker_status
                    .get_or_create(&WorkerStateLabels {
                        app: app(),
                        worker: w.id.to_string(),
                        status: s.to_string(),
                    })
                    .set(i64::from(w.status == s));
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
                    worker: w.id.to_string(),
                    pid: pid.to_string(),
                })
                .set(1);
            cpu.get_or_create(&l)
                .inc_by(m.cpu_seconds.get(&pid).copied().unwrap_or(0.0));
            if let Some(rr) = m.round_robin.iter().find(|s| s.pid == pid) {
                handed.get_or_create(&l).inc_by(rr.handed_over);
                pending.get_or_create(&l).set(rr.pending as i64);
            }
        }
        for ((slot, cause, exit), n) in &m.counters.exits {
            exits
                .get_or_create(&ExitLabels {
                    app: app(),
                    worker: slot.to_string(),
                    cause: cause.to_string(),
                    exit: exit.clone(),
                })
                .inc_by(*n);
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
    use crate::app::Counters;
    use herd_engine::supervisor::RoundRobinStats;
    use herd_protocol::{AppInfo, WorkerInfo};

    fn worker(id: usize, pid: Option<u32>, status: &str) -> WorkerInfo {
        WorkerInfo {
            id,
            pid,
            status: status.into(),
            restarts: 2,
            uptime_ms: 1500,
            cpu_percent: 0.0,
            memory_bytes: 4096,
        }
    }

    #[test]
    fn one_series_per_slot_with_counters_and_states() {
        let mut counters = Counters {
            reloads: 3,
            reloads_failed: 1,
            log_bytes: [100, 7],
            log_lines: [4, 1],
            ..Counters::default()
        };
        counters.exits.insert((1, "signal", "SIGKILL".into()), 2);
        let app = AppMetrics {
            info: AppInfo {
                name: "api".into(),
                id: 0,
                mode: "cluster".into(),
                status: "reloading".into(),
                instances: 2,
                online: 2,
                listen: vec![],
                out_log: "/o".into(),
                err_log: "/e".into(),
                workers: vec![
                    worker(0, Some(10), "online"),
                    // Slot 0's replacement during the reload: not a second series.
                    worker(0, Some(12), "launching"),
                    worker(1, Some(11), "online"),
                ],
            },
            counters,
            round_robin: vec![RoundRobinStats {
                slot: 1,
                pid: 11,
                handed_over: 5,
                pending: 1,
            }],
            cpu_seconds: [(10, 0.5)].into_iter().collect(),
        };
        let text = encode(&[app], 2.0).unwrap();
        for line in [
            "herd_app_status{app=\"api\",status=\"reloading\"} 1",
            "herd_app_status{app=\"api\",status=\"online\"} 0",
            "herd_app_reloads_total{app=\"api\"} 3",
            "herd_app_reloads_failed_total{app=\"api\"} 1",
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
