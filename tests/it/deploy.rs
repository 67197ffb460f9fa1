//! The examples in `deploy/` are read by Docker and Kubernetes, which the
//! tests cannot run here; they are checked for what those would reject or get
//! wrong: the manifests parse as Deployments with herd as the entrypoint and
//! the probes, ports, scrape annotations and grace period agree with each
//! other; the Dockerfile's entrypoints are exec form (so herd, not a shell,
//! is PID 1).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

/// Every document of a multi-document YAML file.
fn documents(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy(name)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// The one Deployment in `name`, and its one container.
fn deployment(name: &str) -> (Value, Value) {
    let docs = documents(name);
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 1, "{name}: one Deployment");
    let d = deployments[0].clone();
    assert_eq!(d["apiVersion"], "apps/v1", "{name}");
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .clone();
    assert_eq!(containers.len(), 1, "{name}: one container");
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        &d["spec"]["selector"]["matchLabels"], labels,
        "{name}: the selector matches the pod's labels"
    );
    (d, containers[0].clone())
}

/// The container port a probe's `port` (a name or a number) refers to.
fn port_of(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("a port name or number");
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

fn seconds(text: &str) -> Duration {
    let n: u64 = text.trim_end_matches('s').parse().expect("N s");
    Duration::from_secs(n)
}

/// The grace period covers preStop plus herd's kill timeout.
fn assert_grace_period(d: &Value, container: &Value, kill_timeout: Duration, name: &str) {
    let grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let pre_stop = str_list(&container["lifecycle"]["preStop"]["exec"]["command"]);
    assert_eq!(pre_stop[0], "sleep", "{name}: preStop sleeps");
    let pre_stop: u64 = pre_stop[1].parse().unwrap();
    assert!(
        grace > pre_stop + kill_timeout.as_secs(),
        "{name}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s + kill timeout {kill_timeout:?}"
    );
}

#[test]
fn the_daemon_manifest_probes_the_health_endpoints_and_is_scraped() {
    let name = "kubernetes.yaml";
    let (d, c) = deployment(name);
    let command = str_list(&c["command"]);
    assert_eq!(&command[..2], ["herd", "daemon"], "{name}: herd is PID 1");
    let metrics = command
        .iter()
        .position(|a| a == "--metrics")
        .map(|i| command[i + 1].clone())
        .expect("--metrics ADDR");
    let metrics_port: u64 = metrics.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        metrics.starts_with("0.0.0.0:"),
        "{name}: the kubelet and Prometheus reach the pod IP, not localhost: {metrics}"
    );

    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(
        annotations["prometheus.io/port"],
        metrics_port.to_string().as_str()
    );

    let ready = &c["readinessProbe"]["httpGet"];
    assert!(
        ready["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/readyz?app=")),
        "{name}: readiness on /readyz?app=NAME: {ready:?}"
    );
    assert_eq!(port_of(&c, &ready["port"]), metrics_port);
    let live = &c["livenessProbe"]["httpGet"];
    assert_eq!(live["path"], "/healthz");
    assert_eq!(port_of(&c, &live["port"]), metrics_port);

    // The app the probe asks about is the one the image's app list defines,
    // with the kill timeout the grace period must cover.
    let app = ready["path"]
        .as_str()
        .unwrap()
        .split("app=")
        .nth(1)
        .unwrap();
    let herd_toml: toml::Value =
        toml::from_str(&std::fs::read_to_string(deploy("herd.toml")).unwrap()).unwrap();
    let def = herd_toml["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"].as_str() == Some(app))
        .unwrap_or_else(|| panic!("deploy/herd.toml defines no app {app}"));
    let kill_timeout = seconds(def["kill_timeout"].as_str().unwrap());
    assert_grace_period(&d, &c, kill_timeout, name);

    assert!(
        documents(name).iter().any(|d| d["kind"] == "Service"),
        "{name}: a Service"
    );
}

#[test]
fn the_run_manifest_probes_the_app_port() {
    let name = "kubernetes-run.yaml";
    let (d, c) = deployment(name);
    let command = str_list(&c["command"]);
    assert_eq!(&command[..2], ["herd", "run"], "{name}: herd is PID 1");
    let kill_timeout = command
        .iter()
        .position(|a| a == "--kill-timeout")
        .map(|i| seconds(&command[i + 1]))
        .expect("--kill-timeout");
    let app_port = port_of(&c, &Value::from("http"));
    let ready = &c["readinessProbe"]["httpGet"];
    assert_eq!(port_of(&c, &ready["port"]), app_port);
    assert_eq!(
        port_of(&c, &c["livenessProbe"]["tcpSocket"]["port"]),
        app_port
    );
    assert_grace_period(&d, &c, kill_timeout, name);
}

#[test]
fn the_dockerfile_makes_herd_pid_1() {
    let text = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let entrypoints: Vec<Vec<String>> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ENTRYPOINT "))
        .map(|json| {
            serde_json::from_str(json).unwrap_or_else(|e| {
                panic!("ENTRYPOINT must be exec form (a JSON array), or a shell is PID 1: {json} ({e})")
            })
        })
        .collect();
    assert_eq!(entrypoints.len(), 2, "the run and daemon targets");
    for e in &entrypoints {
        assert_eq!(e[0], "herd");
    }
    assert_eq!(entrypoints[0][1], "run");
    assert_eq!(entrypoints[1][1], "daemon");
    assert!(
        text.lines().filter(|l| l.starts_with("FROM ")).count() >= 3,
        "multi-stage"
    );
    assert!(text.contains("COPY deploy/herd.toml"));
}
