use std::time::{Duration, Instant};

use herd_engine::config::{Balance, Instances};
use nix::sys::signal::Signal;

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Node is needed for pm2's JS files: a test without it is skipped (the
/// testkit's one prerequisite check), except under CI, where it fails.
pub(super) fn node_available() -> bool {
    herd_testkit::need(herd_testkit::Need::Node).is_some()
}

fn env_of(app: &FileApp) -> Vec<(&str, &str)> {
    app.options
        .env
        .iter()
        .filter_map(|e| match e {
            crate::options::EnvArg::Var(k, v) => Some((k.as_str(), v.as_str())),
            crate::options::EnvArg::Profile(_) => None,
        })
        .collect()
}

/// `load_from` with the file's own directory as the current one.
fn load(path: &Path, profile: Option<&str>) -> Result<(Vec<FileApp>, Vec<String>), UsageError> {
    load_from(path, profile, path.parent().unwrap())
}

fn error_of(result: Result<(Vec<FileApp>, Vec<String>), UsageError>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            eprintln!("error: {}", e.0);
            e.0
        }
    }
}

const HERD_TOML: &str = r#"
[[apps]]
name = "web"
script = "server.js"
args = "--port 8000 'two words'"
instances = 4
listen = ["127.0.0.1:8000", "admin=127.0.0.1:8001"]
balance = "round-robin"
kill_timeout = "12s"
max_memory_restart = "300M"
wait_ready = true
restart_delay = "10s"
log_date_format = "YYYY-MM-DD"

[apps.env]
NODE_ENV = "development"
PORT = 8000
DEBUG = true

[apps.env_production]
NODE_ENV = "production"
EXTRA = "1"

[[apps]]
command = ["./worker", "--queue", "jobs"]
kill_timeout = 12000
restart = "on-failure"
kill_signal = "SIGTERM"
cwd = "sub"
out_file = "logs/w.log"
log_keep = 3
"#;

#[test]
fn herd_toml_two_apps_and_a_profile() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "herd.toml", HERD_TOML);
    let (apps, warnings) = load(&path, Some("production")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(apps.len(), 2);

    let web = &apps[0];
    assert_eq!(web.options.name.as_deref(), Some("web"));
    assert_eq!(web.command, ["server.js", "--port", "8000", "two words"]);
    assert_eq!(web.options.instances, Some(Instances::Count(4)));
    assert_eq!(web.options.listen.len(), 2);
    assert_eq!(web.options.listen[1].name, "admin");
    assert_eq!(web.options.balance, Some(Balance::RoundRobin));
    assert_eq!(web.options.kill_timeout, Duration::from_secs(12));
    assert!(web.options.wait_ready);
    // herd's restart_delay doubles; the ceiling grows to at least the first delay.
    assert_eq!(web.options.restart_delay, Duration::from_secs(10));
    assert_eq!(web.options.max_restart_delay, Duration::from_secs(10));
    assert_eq!(web.options.style, Style::Script);
    assert_eq!(web.daemon.max_memory_restart, Some(300 << 20));
    assert_eq!(web.daemon.log_date_format.as_deref(), Some("YYYY-MM-DD"));
    assert_eq!(
        env_of(web),
        [
            ("NODE_ENV", "production"),
            ("PORT", "8000"),
            ("DEBUG", "true"),
            ("EXTRA", "1")
        ]
    );
    assert_eq!(web.base, dir.path());

    let worker = &apps[1];
    assert_eq!(worker.options.name.as_deref(), Some("worker"));
    assert_eq!(worker.command, ["./worker", "--queue", "jobs"]);
    assert_eq!(worker.options.style, Style::Argv);
    // One instance unless told otherwise, as under `herd start` (app_def's default).
    assert_eq!(worker.options.instances, None);
    assert_eq!(worker.options.kill_timeout, Duration::from_secs(12));
    assert_eq!(worker.options.restart, RestartMode::OnFailure);
    assert_eq!(worker.options.kill_signal, Signal::SIGTERM);
    assert_eq!(worker.options.cwd.as_deref(), Some(Path::new("sub")));
    assert_eq!(
        worker.daemon.out_file.as_deref(),
        Some(Path::new("logs/w.log"))
    );
    assert_eq!(worker.daemon.log_keep, 3);
    assert!(worker.options.env.is_empty());

    // Without the profile, env alone.
    let (apps, _) = load(&path, None).unwrap();
    assert_eq!(
        env_of(&apps[0]),
        [
            ("NODE_ENV", "development"),
            ("PORT", "8000"),
            ("DEBUG", "true")
        ]
    );
    // A profile no app has is worth a warning.
    let (_, warnings) = load(&path, Some("staging")).unwrap();
    assert!(warnings[0].contains("env_staging"), "{warnings:?}");
}

/// The same two apps, as pm2 users write them.
const ECOSYSTEM_JS: &str = r#"
const port = 3000;
module.exports = {
  apps: [
    {
      name: "api",
      script: "./hello.js",
      args: "--port 3000",
      instances: "max",
      exec_mode: "cluster",
      kill_timeout: 3000,
      listen_timeout: 8000,
      wait_ready: true,
      max_memory_restart: "200M",
      min_uptime: "2s",
      max_restarts: 5,
      restart_delay: 250,
      node_args: "--max-old-space-size=512",
      merge_logs: true,
      time: true,
      out_file: "./logs/api-out.log",
      err_log: "./logs/api-err.log",
      instance_var: "INSTANCE_ID",
      env: { NODE_ENV: "development", PORT: port, VERBOSE: false },
      env_production: { NODE_ENV: "production" },
    },
    {
      script: "worker.js",
      exec_mode: "fork_mode",
      autorestart: false,
      exp_backoff_restart_delay: 100,
      interpreter_args: ["--inspect"],
      shutdown_with_message: true,
      listen: "127.0.0.1:9000",
      balance: "reuseport",
    },
  ],
};
"#;

const ECOSYSTEM_JSON: &str = r#"{
  "apps": [
    {
      "name": "api",
      "script": "./hello.js",
      "args": "--port 3000",
      "instances": "max",
      "exec_mode": "cluster",
      "kill_timeout": 3000,
      "listen_timeout": 8000,
      "wait_ready": true,
      "max_memory_restart": "200M",
      "min_uptime": "2s",
      "max_restarts": 5,
      "restart_delay": 250,
      "node_args": "--max-old-space-size=512",
      "merge_logs": true,
      "time": true,
      "out_file": "./logs/api-out.log",
      "err_log": "./logs/api-err.log",
      "instance_var": "INSTANCE_ID",
      "env": { "NODE_ENV": "development", "PORT": 3000, "VERBOSE": false },
      "env_production": { "NODE_ENV": "production" }
    },
    {
      "script": "worker.js",
      "exec_mode": "fork_mode",
      "autorestart": false,
      "exp_backoff_restart_delay": 100,
      "interpreter_args": ["--inspect"],
      "shutdown_with_message": true,
      "listen": "127.0.0.1:9000",
      "balance": "reuseport"
    }
  ]
}
"#;

const ECOSYSTEM_YAML: &str = r#"
apps:
  - name: api
    script: ./hello.js
    args: --port 3000
    instances: max
    exec_mode: cluster
    kill_timeout: 3000
    listen_timeout: 8000
    wait_ready: true
    max_memory_restart: 200M
    min_uptime: 2s
    max_restarts: 5
    restart_delay: 250
    node_args: --max-old-space-size=512
    merge_logs: true
    time: true
    out_file: ./logs/api-out.log
    err_log: ./logs/api-err.log
    instance_var: INSTANCE_ID
    env:
      NODE_ENV: development
      PORT: 3000
      VERBOSE: false
    env_production:
      NODE_ENV: production
  - script: worker.js
    exec_mode: fork_mode
    autorestart: false
    exp_backoff_restart_delay: 100
    interpreter_args: [--inspect]
    shutdown_with_message: true
    listen: 127.0.0.1:9000
    balance: reuseport
"#;

fn check_pm2_apps(apps: &[FileApp], dir: &Path) {
    assert_eq!(apps.len(), 2);
    let api = &apps[0];
    assert_eq!(api.options.name.as_deref(), Some("api"));
    assert_eq!(api.command, ["./hello.js", "--port", "3000"]);
    assert_eq!(api.options.instances, Some(Instances::Max));
    assert_eq!(api.options.kill_timeout, Duration::from_secs(3));
    assert_eq!(api.options.listen_timeout, Duration::from_secs(8));
    assert!(api.options.wait_ready);
    assert_eq!(api.daemon.max_memory_restart, Some(200 << 20));
    assert_eq!(api.options.min_uptime, Duration::from_secs(2));
    assert_eq!(api.options.max_restarts, 5);
    // pm2's restart_delay is a fixed delay: pm2's counting.
    assert_eq!(api.options.restart_delay, Duration::from_millis(250));
    assert_eq!(api.options.counting, Counting::Pm2(Pm2Delay::Fixed));
    assert_eq!(api.options.interpreter_args(), ["--max-old-space-size=512"]);
    assert_eq!(api.options.exec_mode, Some(ExecMode::Cluster));
    assert_eq!(api.daemon.merge_logs, Some(true));
    assert!(api.daemon.time);
    assert_eq!(
        api.daemon.out_file.as_deref(),
        Some(Path::new("./logs/api-out.log"))
    );
    assert_eq!(
        api.daemon.error_file.as_deref(),
        Some(Path::new("./logs/api-err.log"))
    );
    assert_eq!(api.options.instance_var.as_deref(), Some("INSTANCE_ID"));
    assert_eq!(
        env_of(api),
        [
            ("NODE_ENV", "production"),
            ("PORT", "3000"),
            ("VERBOSE", "false")
        ]
    );
    assert_eq!(api.base, dir);

    let worker = &apps[1];
    assert_eq!(worker.options.name.as_deref(), Some("worker"));
    assert_eq!(worker.command, ["worker.js"]);
    // pm2 starts one instance unless told otherwise (app_def's default).
    assert_eq!(worker.options.instances, None);
    assert_eq!(worker.options.exec_mode, Some(ExecMode::Fork));
    assert_eq!(
        worker.options.counting,
        Counting::Pm2(Pm2Delay::Exponential(Duration::from_millis(100)))
    );
    assert_eq!(worker.options.restart, RestartMode::Never);
    assert_eq!(
        worker.options.restart_delay,
        Duration::ZERO,
        "pm2's default"
    );
    assert_eq!(worker.options.interpreter_args(), ["--inspect"]);
    assert!(worker.options.shutdown_with_message);
    assert_eq!(worker.options.listen.len(), 1);
    assert_eq!(worker.options.balance, Some(Balance::ReusePort));
}

/// The parts of a FileApp that a start depends on, comparable.
fn summary(apps: &[FileApp]) -> String {
    let mut apps = apps.to_vec();
    for a in &mut apps {
        a.options.source_file = None;
    }
    format!("{apps:?}")
}

#[test]
fn pm2_json_and_yaml_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let json = write(dir.path(), "ecosystem.json", ECOSYSTEM_JSON);
    let yaml = write(dir.path(), "ecosystem.yaml", ECOSYSTEM_YAML);
    let (from_json, w1) = load(&json, Some("production")).unwrap();
    let (from_yaml, w2) = load(&yaml, Some("production")).unwrap();
    assert!(w1.is_empty() && w2.is_empty(), "{w1:?} {w2:?}");
    check_pm2_apps(&from_json, dir.path());
    assert_eq!(summary(&from_json), summary(&from_yaml));
}

#[test]
fn pm2_ecosystem_js_reads_like_its_json() {
    if !node_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let js = write(dir.path(), "ecosystem.config.js", ECOSYSTEM_JS);
    let json = write(dir.path(), "ecosystem.json", ECOSYSTEM_JSON);
    let (from_js, warnings) = load(&js, Some("production")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    check_pm2_apps(&from_js, dir.path());
    let (from_json, _) = load(&json, Some("production")).unwrap();
    assert_eq!(summary(&from_js), summary(&from_json));

    // An ES module, and a bare list of apps; what the file prints is not config.
    let mjs = write(
        dir.path(),
        "ecosystem.config.mjs",
        "console.log('hello from the config');\nexport default [{ script: 'a.js', instances: 2 }];\n",
    );
    let (apps, _) = load(&mjs, None).unwrap();
    assert_eq!(apps[0].command, ["a.js"]);
    assert_eq!(apps[0].options.instances, Some(Instances::Count(2)));

    // A .js file in a package of ES modules (`"type": "module"`) is imported.
    let esm = dir.path().join("esm");
    std::fs::create_dir(&esm).unwrap();
    write(&esm, "package.json", r#"{"type": "module"}"#);
    let js = write(
        &esm,
        "ecosystem.config.js",
        "export default { apps: [{ name: 'esm', script: 'b.js' }] };\n",
    );
    let (apps, _) = load(&js, None).unwrap();
    assert_eq!(apps[0].options.name.as_deref(), Some("esm"));
    assert_eq!(apps[0].base, esm);
}

#[test]
fn a_js_file_that_throws_gives_nodes_error() {
    if !node_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let js = write(
        dir.path(),
        "ecosystem.config.cjs",
        "throw new Error('no database url');\n",
    );
    let err = error_of(load(&js, None));
    assert!(err.contains("ecosystem.config.cjs"), "{err}");
    assert!(err.contains("no database url"), "{err}");
    assert!(err.contains("ecosystem.config.cjs:1:7"), "{err}");
    assert!(!err.contains("node:internal"), "{err}");

    // A wrong type in a JS file names the key, and the line where it is written.
    let js = write(
        dir.path(),
        "bad.config.js",
        "module.exports = {\n  apps: [{ script: 'a.js',\n    kill_timeout: true }] };\n",
    );
    let err = error_of(load(&js, None));
    assert!(
        err.contains("bad.config.js:3:5: apps[0].kill_timeout"),
        "{err}"
    );
    // Written twice: no line rather than a wrong one.
    let js = write(
        dir.path(),
        "bad.config.js",
        "module.exports = [{ script: 'a.js', kill_timeout: 1 },\n { script: 'b.js', kill_timeout: 'x' }];\n",
    );
    let err = error_of(load(&js, None));
    assert!(
        err.contains("bad.config.js: [1].kill_timeout: invalid duration 'x'"),
        "{err}"
    );
}

#[test]
fn without_node_a_js_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let js = write(dir.path(), "ecosystem.config.js", ECOSYSTEM_JS);
    let err = js::evaluate_with(
        "/nonexistent/node",
        &js,
        js::Source::Module,
        js::LIMIT,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(err.0.contains("needs Node.js"), "{}", err.0);
    assert!(err.0.contains("ecosystem.config.js"), "{}", err.0);
}

#[test]
fn unknown_keys_warn_naming_file_app_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(
        dir.path(),
        "herd.toml",
        "typo = 1\n[[apps]]\nname = \"web\"\nscript = \"a.js\"\nkill-timeout = \"3s\"\nvizion = true\nfrobnicate = 2\nscirpt_x = 1\n",
    );
    let (apps, warnings) = load(&toml, None).unwrap();
    assert_eq!(apps.len(), 1);
    let all = warnings.join("\n");
    assert_eq!(warnings.len(), 5, "{all}");
    assert!(
        all.contains("herd.toml: top-level key 'typo' ignored"),
        "{all}"
    );
    assert!(
        all.contains("herd.toml: app 'web': unknown key 'kill-timeout' (ignored): did you mean 'kill_timeout'?"),
        "{all}"
    );
    assert!(
        all.contains(
            "app 'web': pm2's 'vizion' is not done by herd (ignored): herd reads no git metadata"
        ),
        "{all}"
    );
    assert!(
        all.contains("app 'web': unknown key 'frobnicate' (ignored)\n"),
        "{all}"
    );

    let json = write(
        dir.path(),
        "apps.json",
        r#"[{"script": "api.js", "colour": "blue"}]"#,
    );
    let (_, warnings) = load(&json, None).unwrap();
    assert_eq!(
        warnings,
        [format!(
            "{}: app 'api': unknown key 'colour' (ignored)",
            json.display()
        )]
    );
}

#[test]
fn a_wrong_type_names_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(
        dir.path(),
        "herd.toml",
        "[[apps]]\nscript = \"a.js\"\n\n[[apps]]\nscript = \"b.js\"\nkill_timeout = true\n",
    );
    let err = error_of(load(&toml, None));
    let expected = format!("{}:6:16: apps[1].kill_timeout: ", toml.display());
    assert!(err.starts_with(&expected), "{err}");
    assert!(err.contains("boolean"), "{err}");

    // A value of the right type that the option's parser refuses: its message.
    let toml = write(
        dir.path(),
        "herd.toml",
        "[[apps]]\nscript = \"a.js\"\ninstances = 0.5\nkill_timeout = \"12x\"\n",
    );
    let err = error_of(load(&toml, None));
    assert!(err.contains(":3:"), "{err}");
    assert!(
        err.contains("apps[0].instances: invalid instance count '0.5'"),
        "{err}"
    );

    let json = write(
        dir.path(),
        "ecosystem.json",
        "{\"apps\": [\n  {\"script\": \"a.js\",\n   \"env\": [1]}\n]}\n",
    );
    let err = error_of(load(&json, None));
    assert!(err.starts_with(&format!("{}:3:", json.display())), "{err}");
    assert!(
        err.contains(
            "apps[0].env: invalid type: sequence, expected a table of environment variables"
        ),
        "{err}"
    );

    let yaml = write(
        dir.path(),
        "ecosystem.yml",
        "apps:\n  - script: a.js\n    max_memory_restart: lots\n",
    );
    let err = error_of(load(&yaml, None));
    assert!(
        err.starts_with(&format!(
            "{}:3:25: apps[0].max_memory_restart: invalid size 'lots'",
            yaml.display()
        )),
        "{err}"
    );

    // A syntax error has a line too, in every format.
    let yaml = write(
        dir.path(),
        "e.yaml",
        "apps:\n  - script: a.js\n   name: x\n",
    );
    let err = error_of(load(&yaml, None));
    assert!(err.starts_with(&format!("{}:3:", yaml.display())), "{err}");
    let json = write(
        dir.path(),
        "e.json",
        "{\"apps\": [\n  {\"script\": \"a.js\" \"name\": 1}\n]}",
    );
    let err = error_of(load(&json, None));
    assert!(err.starts_with(&format!("{}:2:", json.display())), "{err}");
    let toml = write(dir.path(), "herd.toml", "[[apps]]\nscript = \n");
    let err = error_of(load(&toml, None));
    assert!(err.contains("herd.toml:2:"), "{err}");
}

#[test]
fn pm2_top_level_shapes() {
    let dir = tempfile::tempdir().unwrap();
    // One app by itself, `apps` as one object, and pm2's `deploy` section.
    let json = write(dir.path(), "one.json", r#"{"script": "a.js", "name": "a"}"#);
    let (apps, warnings) = load(&json, None).unwrap();
    assert_eq!(apps[0].options.name.as_deref(), Some("a"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let yaml = write(
        dir.path(),
        "one.yaml",
        "apps:\n  script: b.js\ndeploy:\n  production:\n    user: node\n",
    );
    let (apps, warnings) = load(&yaml, None).unwrap();
    assert_eq!(apps[0].command, ["b.js"]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("pm2's 'deploy' is not done by herd"),
        "{warnings:?}"
    );
    // Anything else is not a list of apps.
    let json = write(dir.path(), "bad.json", "[1]");
    let err = error_of(load(&json, None));
    assert!(
        err.contains("[0]: invalid type: integer `1`, expected an app"),
        "{err}"
    );
}

#[test]
fn missing_script_and_duplicate_names_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(
        dir.path(),
        "herd.toml",
        "[[apps]]\nname = \"web\"\ninstances = 2\n",
    );
    let err = error_of(load(&toml, None));
    assert!(err.contains("app 'web' has no script"), "{err}");

    let json = write(dir.path(), "e.json", r#"{"apps": [{"instances": 2}]}"#);
    let err = error_of(load(&json, None));
    assert!(err.contains("app number 1 has no script"), "{err}");

    let json = write(dir.path(), "e.json", r#"{"apps": []}"#);
    let err = error_of(load(&json, None));
    assert!(err.contains("no apps"), "{err}");

    let yaml = write(
        dir.path(),
        "e.yaml",
        "apps:\n  - script: web.js\n  - script: other/web.js\n",
    );
    let err = error_of(load(&yaml, None));
    assert!(err.contains("two apps are named 'web'"), "{err}");

    let err = error_of(load(&dir.path().join("nope.toml"), None));
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn positions_are_taken_out_of_messages() {
    assert_eq!(
        without_position("did not find x at line 3 column 4, while parsing y at line 1 column 1"),
        "did not find x, while parsing y"
    );
    assert_eq!(without_position("at line 3 only"), "at line 3 only");
    assert_eq!(clean_path("apps[0].?"), "apps[0]");
}

#[test]
fn config_files_are_told_from_scripts_by_name() {
    for yes in [
        "herd.toml",
        "apps.json",
        "a/b/ecosystem.yaml",
        "x.yml",
        "ecosystem.config.js",
        "pm2.config.cjs",
        "ECOSYSTEM.CONFIG.MJS",
    ] {
        assert!(is_config_file(Path::new(yes)), "{yes}");
    }
    for no in [
        "app.js",
        "server.mjs",
        "config.js",
        "server",
        "run.sh",
        "toml",
    ] {
        assert!(!is_config_file(Path::new(no)), "{no}");
    }
}

#[test]
fn the_examples_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let (apps, warnings) = load(&root.join("herd.toml"), Some("production")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(apps.len() >= 2);
    if node_available() {
        let (js_apps, warnings) =
            load(&root.join("node/ecosystem.config.js"), Some("production")).unwrap();
        assert_eq!(js_apps[0].base, root.join("node"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(js_apps.len(), 2);
        // What was read passes the same checks as the command line, scripts found.
        for app in apps.iter().chain(&js_apps) {
            let spec = app
                .options
                .to_spec(&app.command, &app.base)
                .unwrap_or_else(|e| panic!("{}: {}", app.command[0], e.0));
            assert!(spec.args[0].ends_with(".js"), "{:?}", spec.args);
            let def = options::app_def(&app.options, &app.daemon, &app.command, &app.base).unwrap();
            assert!(def.spec.env.iter().any(|(k, _)| k == "PORT"));
        }
    }
}

/// A pm2 file (JSON) with one app `{script: 'a.js', <key>: <value>}`, the key
/// on line 3.
fn one_key_json(dir: &Path, key: &str, value: &str) -> PathBuf {
    write(
        dir,
        "ecosystem.json",
        &format!(
            "{{\"apps\": [{{\n  {},\n  \"{key}\": {value}\n}}]}}\n",
            if key == "script" {
                "\"name\": \"x\""
            } else {
                "\"script\": \"a.js\""
            }
        ),
    )
}

#[test]
fn every_key_with_a_wrong_value_names_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    // (key, a wrong value, what the error says)
    let table = [
        ("name", "[1]", "invalid type: sequence, expected a name"),
        ("script", "12", "expected a string"),
        (
            "args",
            "{\"a\": 1}",
            "invalid type: map, expected a list of arguments",
        ),
        ("instances", "\"lots\"", "invalid instance count 'lots'"),
        ("instances", "2.5", "invalid instance count '2.5'"),
        (
            "exec_mode",
            "\"forks\"",
            "unknown exec_mode 'forks': use cluster or fork",
        ),
        ("execute_command", "\"yes\"", "use true or false"),
        ("listen", "\"nowhere\"", "invalid listen address 'nowhere'"),
        ("balance", "\"random\"", "unknown balance mode 'random'"),
        ("interpreter", "true", "expected a string"),
        ("node_args", "{}", "invalid type: map"),
        ("interpreter_args", "{}", "invalid type: map"),
        (
            "shutdown_with_message",
            "1",
            "invalid type: integer `1`, expected true or false",
        ),
        (
            "restart",
            "\"sometimes\"",
            "unknown restart mode 'sometimes'",
        ),
        (
            "autorestart",
            "\"no\"",
            "invalid value 'no': use true or false",
        ),
        ("restart_delay", "\"soon\"", "invalid duration 'soon'"),
        ("exp_backoff_restart_delay", "-1", "invalid duration '-1'"),
        (
            "max_restart_delay",
            "true",
            "invalid type: boolean `true`, expected a duration",
        ),
        ("min_uptime", "\"1x\"", "invalid duration '1x'"),
        ("max_restarts", "-2", "invalid count '-2'"),
        ("kill_signal", "\"SIGFOO\"", "unknown signal 'SIGFOO'"),
        ("kill_timeout", "\"12x\"", "invalid duration '12x'"),
        ("wait_ready", "\"maybe\"", "invalid value 'maybe'"),
        (
            "ready_delay",
            "[]",
            "invalid type: sequence, expected a duration",
        ),
        ("listen_timeout", "\"x\"", "invalid duration 'x'"),
        (
            "env",
            "\"A=1\"",
            "expected a table of environment variables",
        ),
        ("cwd", "1", "expected a string"),
        ("instance_var", "\"A=B\"", "invalid variable name 'A=B'"),
        ("append_env_to_name", "\"x\"", "use true or false"),
        ("time", "2", "expected true or false"),
        ("log_date_format", "false", "expected a string"),
        ("out_file", "1", "expected a string"),
        ("error_file", "{}", "expected a string"),
        ("log_max_size", "\"big\"", "invalid size 'big'"),
        ("log_keep", "\"many\"", "invalid count 'many'"),
        ("max_memory_restart", "\"lots\"", "invalid size 'lots'"),
        (
            "watch",
            "1",
            "expected true, false, a string, or a list of strings",
        ),
        (
            "ignore_watch",
            "true",
            "invalid type: boolean `true`, expected a name, glob or path",
        ),
        ("watch_delay", "\"x\"", "invalid duration 'x'"),
        (
            "cron_restart",
            "\"61 * * * *\"",
            "invalid cron pattern '61 * * * *'",
        ),
        ("cron_restart", "\"* *\"", "it has 2 field(s)"),
        ("cron_restart", "\"0 0 31 2 *\"", "matches no date"),
        (
            "ignore_watch",
            "[\"logs\", \"[a-\"]",
            "invalid ignore_watch pattern '[a-'",
        ),
        ("cron", "\"@often\"", "invalid cron pattern"),
        ("stop_exit_codes", "[\"a\"]", "invalid exit code 'a'"),
        ("stop_exit_codes", "[300]", "invalid exit code '300'"),
        (
            "stop_exit_codes",
            "true",
            "invalid type: boolean `true`, expected an exit code",
        ),
        (
            "env_production",
            "\"A=1\"",
            "expected a table of environment variables",
        ),
        (
            "exp_backoff_restart_delay",
            "\"fast\"",
            "invalid duration 'fast'",
        ),
        ("increment_var", "\"A=B\"", "invalid variable name 'A=B'"),
        (
            "filter_env",
            "1",
            "expected true, false, a string, or a list of strings",
        ),
        ("increment_var", "\"\"", "invalid variable name ''"),
        ("port", "70000", "invalid port '70000'"),
        ("port", "0", "invalid port '0'"),
        ("log_type", "1", "expected a string"),
        ("log_file", "1", "expected true, false, a string"),
        ("merge_logs", "\"x\"", "use true or false"),
        ("combine_logs", "3", "expected true or false"),
        // camelCase, as pm2 takes it.
        ("killTimeout", "\"12x\"", "invalid duration '12x'"),
    ];
    for (key, value, says) in table {
        let path = one_key_json(dir.path(), key, value);
        let err = error_of(load(&path, None));
        let want = format!("{}:3:", path.display());
        assert!(err.starts_with(&want), "{key}={value}: {err}");
        assert!(
            err.contains(&format!("apps[0].{key}")),
            "{key}={value}: {err}"
        );
        assert!(err.contains(says), "{key}={value}: {err}");
    }
    // And the same value, right, is taken (no warning).
    for (key, value) in [
        ("port", "3000"),
        ("port", "\"3000\""),
        ("cron_restart", "\"0 0 * * *\""),
        ("cron_restart", "\"*/30 * * * * *\""),
        ("cron_restart", "0"),
        ("stop_exit_codes", "[0, \"2\"]"),
        ("stop_exit_codes", "0"),
        ("log_type", "\"json\""),
        ("killTimeout", "\"12s\""),
        ("maxRestarts", "3"),
        ("autorestart", "\"false\""),
        ("instances", "\"-1\""),
        ("instances", "-1"),
        ("instances", "0"),
    ] {
        let path = one_key_json(dir.path(), key, value);
        let (_, warnings) = load(&path, None).unwrap_or_else(|e| panic!("{key}={value}: {}", e.0));
        assert!(warnings.is_empty(), "{key}={value}: {warnings:?}");
    }
}

#[test]
fn pm2_keys_are_read_into_their_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "ecosystem.json",
        r#"{"apps": [
          {"script": "a.js", "watch": true, "ignore_watch": "node_modules", "watch_delay": 1000,
           "cron_restart": "0 3 * * *", "stop_exit_codes": [0, "2"], "filter_env": ["SECRET", "AWS_"],
           "increment_var": "PORT", "port": "3000", "log_type": "json", "log_file": true,
           "merge_logs": false, "exp_backoff_restart_delay": "100"},
          {"script": "b.js", "name": "b", "watch": ["src", "lib"], "filter_env": true, "log": "all.log",
           "stop_exit_codes": 3, "cron": 0, "log_type": "format"},
          {"script": "c.js", "name": "c", "watch": "src", "filter_env": "TOKEN", "log_file": false}
        ]}"#,
    );
    let (apps, warnings) = load(&path, None).unwrap();
    // Honoured by the engine: its options.
    let o = &apps[0].options;
    assert_eq!(o.stop_exit_codes, [0, 2]);
    assert_eq!(o.increment_var.as_deref(), Some("PORT"));
    assert_eq!(
        o.counting,
        Counting::Pm2(Pm2Delay::Exponential(Duration::from_millis(100)))
    );
    assert_eq!(apps[1].options.stop_exit_codes, [3]);
    assert_eq!(apps[1].options.counting, Counting::Pm2(Pm2Delay::Fixed));
    // The log keys (honoured: they go to the definition's log settings).
    assert_eq!(apps[0].daemon.log_type, Some(LogType::Json));
    assert_eq!(apps[0].daemon.log_file, Some(CombinedLog::Default));
    assert_eq!(apps[0].daemon.merge_logs, Some(false));
    assert_eq!(
        apps[1].daemon.log_file,
        Some(CombinedLog::Path("all.log".into()))
    );
    assert_eq!(apps[1].daemon.log_type, Some(LogType::Raw));
    assert_eq!(apps[2].daemon.log_file, None);
    // watch and cron_restart are app options, as their flags are.
    assert_eq!(o.watch, Some(vec![]));
    assert_eq!(o.ignore_watch, vec!["node_modules".to_string()]);
    assert_eq!(o.watch_delay, Some(std::time::Duration::from_secs(1)));
    assert_eq!(
        o.cron_restart,
        Some(options::CronArg(Some("0 3 * * *".parse().unwrap())))
    );
    assert_eq!(
        apps[1].options.watch,
        Some(vec!["src".into(), "lib".into()])
    );
    assert_eq!(apps[1].options.cron_restart, Some(options::CronArg(None)));
    assert_eq!(apps[2].options.watch, Some(vec!["src".into()]));
    let a = &apps[0].daemon.pm2;
    assert_eq!(
        a.filter_env,
        Some(FilterEnv::Containing(vec!["SECRET".into(), "AWS_".into()]))
    );
    let b = &apps[1].daemon.pm2;
    assert_eq!(b.filter_env, Some(FilterEnv::All));
    let c = &apps[2].daemon.pm2;
    assert_eq!(c.filter_env, Some(FilterEnv::Exact("TOKEN".into())));
    // pm2 reads any log_type but json as raw lines: herd says so, once.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("app 'b': log_type 'format' is no log type"),
        "{warnings:?}"
    );

    // Carried into the definition (paths absolute); `port` is PORT in the
    // env.
    std::fs::write(dir.path().join("a.js"), "").unwrap();
    let (def, warnings) = options::app_def_noting(
        &apps[0].options,
        &apps[0].daemon,
        &apps[0].command,
        &apps[0].base,
    )
    .unwrap();
    assert_eq!(
        def.spec.cron_restart.as_ref().map(|c| c.pattern()),
        Some("0 3 * * *")
    );
    let watch = def.spec.watch.as_ref().expect("watch");
    assert!(watch.paths.is_empty(), "{watch:?}");
    assert_eq!(watch.ignore, Some(vec!["node_modules".to_string()]));
    assert_eq!(watch.delay, std::time::Duration::from_secs(1));
    assert_eq!(def.logs.log_type, LogType::Json);
    assert!(!def.logs.merge_logs);
    let combined = def.logs.log_file.clone().unwrap();
    assert!(combined.ends_with("logs/a.log"), "{}", combined.display());
    assert!(def.spec.env.contains(&("PORT".into(), "3000".into())));
    assert_eq!(def.spec.increment_var.as_deref(), Some("PORT"));
    assert_eq!(def.spec.restart.stop_exit_codes, [0, 2]);
    // Every key is honoured now: nothing to say.
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn pm2_keys_herd_does_not_do_are_named_once_with_what_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "ecosystem.json",
        r#"{"apps": [
          {"script": "a.js", "name": "a", "vizion": true, "namespace": "api", "pmx": false,
           "treekill": true, "autostart": true, "source_map_support": true, "pid_file": "a.pid",
           "windowsHide": true},
          {"script": "b.js", "name": "b", "vizion": true, "treekill": false, "autostart": false,
           "kill_retry_time": 100, "colour": "blue", "instanse": 2}
        ],
        "deploy": {"production": {"user": "node"}}, "static": []}"#,
    );
    let (_, warnings) = load(&path, None).unwrap();
    let all = warnings.join("\n");
    let one = |needle: &str| {
        let n = warnings.iter().filter(|w| w.contains(needle)).count();
        assert_eq!(n, 1, "{needle}: {all}");
    };
    one("apps 'a', 'b': pm2's 'vizion' is not done by herd (ignored): herd reads no git metadata");
    one("app 'a': pm2's 'source_map_support' is not done by herd (ignored): herd injects nothing into the app: add node_args: '--enable-source-maps'");
    one("app 'a': pm2's 'pid_file'");
    one("app 'b': pm2's 'treekill' is not done by herd (ignored): herd always stops a worker's whole process group");
    one("app 'b': pm2's 'autostart'");
    one("app 'b': pm2's 'kill_retry_time'");
    one("app 'b': unknown key 'colour' (ignored)");
    one("app 'b': unknown key 'instanse' (ignored): did you mean 'instances'?");
    one("pm2's 'deploy' is not done by herd (ignored): herd does not deploy");
    one("pm2's 'static' is not done by herd");
    // Values with which herd already does what is asked: nothing to say.
    assert!(
        !all.contains("'pmx'") && !all.contains("app 'a': pm2's 'treekill'"),
        "{all}"
    );
    assert!(
        !all.contains("app 'a': pm2's 'autostart'") && !all.contains("windowsHide"),
        "{all}"
    );
    assert_eq!(warnings.len(), 10, "{all}");

    // Running an app as another user is refused, not ignored.
    let path = one_key_json(dir.path(), "uid", "\"www-data\"");
    let err = error_of(load(&path, None));
    assert!(
        err.contains("pm2's 'uid' is not supported: herd runs apps as the daemon's user"),
        "{err}"
    );
}

#[test]
fn regression_issue15_apps_as_an_object_is_read_as_pm2_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    // pm2 (`_startJson`): a non-list `apps` is one app.
    let path = write(
        dir.path(),
        "ecosystem.json",
        r#"{"apps": {"name": "api", "script": "a.js", "instances": 2}}"#,
    );
    let (apps, warnings) = load(&path, None).unwrap();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].options.name.as_deref(), Some("api"));
    assert!(warnings.is_empty(), "{warnings:?}");
    // An object of apps by name is no app: the error names the key and the fix.
    let path = write(
        dir.path(),
        "ecosystem.json",
        r#"{"apps": {"web": {"script": "web.js"}, "worker": {"script": "worker.js"}}}"#,
    );
    let err = error_of(load(&path, None));
    assert!(
        err.contains("ecosystem.json: apps: is an object whose keys 'web', 'worker' hold apps"),
        "{err}"
    );
    assert!(err.contains("write apps as a list"), "{err}");
    // pm2's other name for the list, `pm2:`.
    let path = write(dir.path(), "e.yaml", "pm2:\n  - script: a.js\n");
    assert_eq!(load(&path, None).unwrap().0.len(), 1);
}

#[test]
fn regression_issue15_js_config_whose_child_holds_stdout_ends_at_the_limit() {
    if !node_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    // The config starts a child that inherits node's stdout and outlives it,
    // and node itself never finishes.
    let js = write(
        dir.path(),
        "hang.config.mjs",
        &format!(
            "import {{ spawn }} from 'child_process';\n\
             import {{ writeFileSync }} from 'fs';\n\
             const c = spawn('sleep', ['600'], {{ stdio: 'inherit' }});\n\
             writeFileSync({:?}, String(c.pid));\n\
             setInterval(() => {{}}, 1000);\n\
             await new Promise(() => {{}});\n\
             export default {{ apps: [{{ script: 'a.js' }}] }};\n",
            pid_file.to_str().unwrap()
        ),
    );
    let started = Instant::now();
    let limit = Duration::from_secs(2);
    let err =
        js::evaluate_with("node", &js, js::Source::Module, limit, &mut Vec::new()).unwrap_err();
    let took = started.elapsed();
    assert!(took < limit + Duration::from_secs(3), "took {took:?}");
    assert!(
        err.0.contains("did not finish evaluating it within 2s"),
        "{}",
        err.0
    );
    assert!(
        err.0.contains("killed it and every process it started"),
        "{}",
        err.0
    );
    assert_gone(&pid_file);

    // Node is done, its child still holds the pipe: read at once, child stopped.
    let js = write(
        dir.path(),
        "child.config.js",
        &format!(
            "const c = require('child_process').spawn('sleep', ['600'], {{ stdio: 'inherit' }});\n\
             require('fs').writeFileSync({:?}, String(c.pid));\n\
             c.unref();\n\
             module.exports = {{ apps: [{{ script: 'a.js', name: 'kept' }}] }};\n",
            pid_file.to_str().unwrap()
        ),
    );
    let started = Instant::now();
    let mut warnings = Vec::new();
    let json = js::evaluate_with(
        "node",
        &js,
        js::Source::Module,
        Duration::from_secs(20),
        &mut warnings,
    )
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(json.contains("\"kept\""), "{json}");
    assert!(
        warnings[0].contains("kept running after node was done"),
        "{warnings:?}"
    );
    assert_gone(&pid_file);
}

/// The process whose pid is in `file` is gone (or a zombie), within a deadline.
fn assert_gone(file: &Path) {
    let pid: i32 = std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        if stat.is_empty() || state == Some("Z") {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} still runs: {stat}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_json_file_that_is_no_strict_json_is_read_as_pm2_reads_it() {
    if !node_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Comments, unquoted keys, single quotes, a trailing comma: pm2 evaluates .json as JS.
    let path = write(
        dir.path(),
        "process.json",
        "{\n  // the API\n  apps: [{\n    name: 'api',\n    script: 'a.js',\n    kill_timeout: 'soon',\n  }],\n}\n",
    );
    let err = error_of(load(&path, None));
    assert!(
        err.contains("process.json:6:5: apps[0].kill_timeout: invalid duration 'soon'"),
        "{err}"
    );
    std::fs::write(
        &path,
        "{\n  // the API\n  apps: [{ name: 'api', script: 'a.js', instances: 2, },],\n}\n",
    )
    .unwrap();
    let (apps, _) = load(&path, None).unwrap();
    assert_eq!(apps[0].options.instances, Some(Instances::Count(2)));
    // Broken either way: the JSON parser's position.
    std::fs::write(&path, "{\"apps\": [\n  {\"script\": \n").unwrap();
    let err = error_of(load(&path, None));
    assert!(err.starts_with(&format!("{}:3:", path.display())), "{err}");
}

#[test]
fn scripts_and_paths_resolve_as_under_pm2() {
    if !node_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("config")).unwrap();
    std::fs::create_dir_all(root.join("srv/api")).unwrap();
    write(root, "app.js", "");
    write(&root.join("srv/api"), "server.js", "");
    write(&root.join("config"), "beside.js", "");
    let config = write(
        &root.join("config"),
        "pm2.config.js",
        "module.exports = { apps: [\n\
           { name: 'backend api', script: 'app.js', out_file: 'logs/out.log', error_file: '~/x-err.log' },\n\
           { name: 'in-cwd', cwd: 'srv/api', script: './server.js', out_file: 'NULL', append_env_to_name: true },\n\
         ] };\n",
    );
    // `pm2 start config/pm2.config.js` from the project's root.
    let (apps, _) = load_from(&config, Some("production"), root).unwrap();
    let def = |i: usize| {
        let a: &FileApp = &apps[i];
        options::app_def_noting(&a.options, &a.daemon, &a.command, &a.base)
            .unwrap()
            .0
    };
    let api = def(0);
    assert_eq!(api.spec.name, "backend api");
    assert_eq!(api.spec.args, [root.join("app.js").to_str().unwrap()]);
    assert_eq!(api.spec.cwd.as_deref(), Some(root));
    assert_eq!(
        api.logs.out_file.as_deref(),
        Some(root.join("logs/out.log").as_path())
    );
    assert_eq!(
        api.logs.error_file,
        Some(options::expand_home("~/x-err.log").unwrap())
    );
    assert_eq!(
        herd_engine::config::log_file_stem(&api.spec.name),
        "backend-api"
    );
    let in_cwd = def(1);
    assert_eq!(in_cwd.spec.name, "in-cwd-production");
    assert_eq!(
        in_cwd.spec.cwd.as_deref(),
        Some(root.join("srv/api").as_path())
    );
    assert_eq!(
        in_cwd.spec.args,
        [root.join("srv/api/server.js").to_str().unwrap()]
    );
    assert_eq!(
        in_cwd.logs.out_file.as_deref(),
        Some(Path::new("/dev/null"))
    );

    // A script beside the config file, run from elsewhere: the error says why.
    std::fs::write(
        &config,
        "module.exports = { apps: [{ script: 'beside.js' }] };\n",
    )
    .unwrap();
    let (apps, _) = load_from(&config, None, root).unwrap();
    let a = &apps[0];
    let err = options::app_def_noting(&a.options, &a.daemon, &a.command, &a.base).unwrap_err();
    assert!(err.0.contains("beside the config file"), "{}", err.0);
}

/// Found by the bad-input corpus: a YAML error below a top-level list said
/// its path twice (`[0].script: .[0].script: invalid type …`).
#[test]
fn a_yaml_error_says_its_path_once() {
    let e = load_text(
        "- &a\n  script: *a\n",
        Path::new("a.yaml"),
        None,
        Path::new("/"),
    )
    .map(drop)
    .unwrap_err()
    .0;
    assert!(e.contains("[0].script: invalid type: map"), "{e}");
    assert_eq!(e.matches("[0].script").count(), 1, "{e}");
}

/// Regression: a file's `namespace` was warned about as "not done" and
/// dropped, while `--namespace` and every verb's namespace selector work.
#[test]
fn regression_file_namespace_was_ignored() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.js", "");
    write(dir.path(), "b.js", "");
    let path = write(
        dir.path(),
        "ecosystem.json",
        r#"{"apps": [{"script": "a.js", "name": "a", "namespace": "Backend"}, {"script": "b.js", "name": "b"}]}"#,
    );
    let (apps, warnings) = load_from(&path, None, dir.path()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let ns: Vec<Option<String>> = apps
        .iter()
        .map(|a| {
            options::app_def_noting(&a.options, &a.daemon, &a.command, &a.base)
                .unwrap()
                .0
                .namespace
        })
        .collect();
    assert_eq!(ns, [Some("Backend".to_string()), None]);

    for bad in [r#""all""#, r#""7""#, r#""""#, "3"] {
        let path = write(
            dir.path(),
            "bad.json",
            &format!(r#"{{"apps": [{{"script": "a.js", "namespace": {bad}}}]}}"#),
        );
        let err = load(&path, None).expect_err(bad).0;
        assert!(
            err.contains("bad.json") && err.contains("namespace"),
            "{bad}: {err}"
        );
    }
}
