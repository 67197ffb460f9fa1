use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Node is needed for pm2's JS files: a test without it is skipped (the
/// testkit's one prerequisite check), except under CI, where it fails.
fn node_available() -> bool {
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
    // One instance unless told otherwise, as under `herd start`.
    assert_eq!(worker.options.instances, Some(Instances::Count(1)));
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
    // pm2's restart_delay is a fixed delay.
    assert_eq!(api.options.restart_delay, Duration::from_millis(250));
    assert_eq!(api.options.max_restart_delay, Duration::from_millis(250));
    assert_eq!(api.options.interpreter_args, ["--max-old-space-size=512"]);
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
    // pm2 starts one instance unless told otherwise.
    assert_eq!(worker.options.instances, Some(Instances::Count(1)));
    assert_eq!(worker.options.restart, RestartMode::Never);
    assert_eq!(worker.options.restart_delay, Duration::from_millis(100));
    assert_eq!(worker.options.max_restart_delay, PM2_MAX_BACKOFF);
    assert_eq!(worker.options.interpreter_args, ["--inspect"]);
    assert!(worker.options.shutdown_with_message);
    assert_eq!(worker.options.listen.len(), 1);
    assert_eq!(worker.options.balance, Some(Balance::ReusePort));
}

/// The parts of a FileApp that a start depends on, comparable.
fn summary(apps: &[FileApp]) -> String {
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

    // A wrong type in a JS file names the key (node's output has no useful lines).
    let js = write(
        dir.path(),
        "bad.config.js",
        "module.exports = { apps: [{ script: 'a.js', kill_timeout: true }] };\n",
    );
    let err = error_of(load(&js, None));
    assert!(err.contains("apps[0].kill_timeout"), "{err}");
    assert!(!err.contains("line"), "{err}");
}

#[test]
fn without_node_a_js_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let js = write(dir.path(), "ecosystem.config.js", ECOSYSTEM_JS);
    let err = evaluate_js_with("/nonexistent/node", &js, &mut Vec::new()).unwrap_err();
    assert!(err.0.contains("needs Node.js"), "{}", err.0);
    assert!(err.0.contains("ecosystem.config.js"), "{}", err.0);
}

#[test]
fn unknown_keys_warn_naming_file_app_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(
        dir.path(),
        "herd.toml",
        "typo = 1\n[[apps]]\nname = \"web\"\nscript = \"a.js\"\nkill-timeout = \"3s\"\nwatch = true\nfrobnicate = 2\n",
    );
    let (apps, warnings) = load(&toml, None).unwrap();
    assert_eq!(apps.len(), 1);
    let all = warnings.join("\n");
    assert_eq!(warnings.len(), 4, "{all}");
    assert!(all.contains("herd.toml: unknown key 'typo'"), "{all}");
    assert!(
        all.contains("herd.toml: app 'web': unknown key 'kill-timeout' (ignored): did you mean 'kill_timeout'?"),
        "{all}"
    );
    assert!(
        all.contains("app 'web': pm2's 'watch' is not supported"),
        "{all}"
    );
    assert!(all.contains("app 'web': unknown key 'frobnicate'"), "{all}");

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
        "{\"apps\": [\n  {\"script\": \"a.js\",\n   \"env\": {\"A\": [1]}}\n]}\n",
    );
    let err = error_of(load(&json, None));
    assert!(err.starts_with(&format!("{}:3:", json.display())), "{err}");
    assert!(
        err.contains("apps[0].env.A: invalid type: sequence"),
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
        "{\"apps\": [\n  {\"script\": \"a.js\",}\n]}",
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
    assert!(warnings.is_empty(), "{warnings:?}");
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
