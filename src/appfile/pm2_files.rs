//! Real pm2 process files from public repositories (recreated under
//! `tests/pm2-files/`, each naming its source in a comment, with stand-in
//! apps), read as a pm2 user would start them: each parses into the
//! definition pm2 would run, with the warnings herd owes the user. (Running
//! them under the daemon is the runtime phase's test.)

use std::path::Path;

use herd_engine::config::Instances;

use super::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pm2-files")
}

/// One app's definition in one line, paths relative to the case's folder.
fn summary(dir: &Path, app: &FileApp, def: &herd_protocol::AppDef) -> String {
    let rel = |p: &Path| -> String {
        match p.strip_prefix(dir) {
            Ok(r) if r.as_os_str().is_empty() => ".".into(),
            Ok(r) => r.display().to_string(),
            Err(_) => p.display().to_string(),
        }
    };
    let program = def.spec.program.file_name().unwrap().to_string_lossy();
    let program = if program.starts_with("python") {
        "python".into()
    } else {
        program
    };
    // Paths in the folder relative to it; programs from PATH by name.
    let args: Vec<String> = def
        .spec
        .args
        .iter()
        .map(|a| match Path::new(a) {
            p if p.is_absolute() && !p.starts_with(dir) => {
                p.file_name().unwrap().to_string_lossy().into_owned()
            }
            p => rel(p),
        })
        .collect();
    let file_env: Vec<String> = app
        .options
        .env
        .iter()
        .filter_map(|e| match e {
            options::EnvArg::Var(k, v) => Some(format!("{k}={v}")),
            options::EnvArg::Profile(_) => None,
        })
        .collect();
    // What herd adds for the interpreter (before the CLI's environment).
    let options::Built { spec, .. } = app
        .options
        .build(
            &app.command,
            &app.base,
            app.options.style,
            Instances::Count(1),
        )
        .unwrap();
    let added: Vec<&str> = spec
        .env
        .iter()
        .filter(|(k, _)| {
            !app.options
                .env
                .iter()
                .any(|e| matches!(e, options::EnvArg::Var(fk, _) if fk == k))
        })
        .map(|(k, _)| k.as_str())
        .collect();
    let mut s = format!(
        "{} | {} {} | {:?} {} x{} | cwd {}",
        def.spec.name,
        program,
        args.join(" "),
        def.spec.kind,
        def.spec.exec_mode,
        app.options
            .instances
            .map_or("1".to_string(), |i| i.to_string()),
        rel(def.spec.cwd.as_deref().unwrap()),
    );
    if !file_env.is_empty() {
        s += &format!(" | env {}", file_env.join(","));
    }
    if !added.is_empty() {
        s += &format!(" | +{}", added.join(","));
    }
    if let Some(p) = &def.logs.out_file {
        s += &format!(" | out {}", rel(p));
    }
    if let Some(p) = &def.logs.error_file {
        s += &format!(" | err {}", rel(p));
    }
    if def.logs.time {
        s += &format!(
            " | time {}",
            def.logs.date_format.as_deref().unwrap_or("iso")
        );
    }
    if let Some(m) = def.max_memory_restart {
        s += &format!(" | mmr {}M", m >> 20);
    }
    let r = &def.spec.restart;
    let pm2 = herd_engine::config::RestartPolicy::pm2();
    if r.mode != RestartMode::Always || r.max_restarts != 16 || r.restart_delay != pm2.restart_delay
    {
        s += &format!(
            " | restart {:?} {}ms x{}",
            r.mode,
            r.restart_delay.as_millis(),
            r.max_restarts
        );
    }
    if let Counting::Pm2(Pm2Delay::Exponential(d)) = r.counting {
        s += &format!(" | exp_backoff {}ms", d.as_millis());
    }
    if !r.stop_exit_codes.is_empty() {
        s += &format!(" | stop_exit_codes {:?}", r.stop_exit_codes);
    }
    if let Some(v) = &def.spec.increment_var {
        s += &format!(" | increment_var {v}");
    }
    if def.spec.ready.wait_ready {
        s += " | wait_ready";
    }
    if let Some(v) = &def.spec.instance_var {
        s += &format!(" | instance_var {v}");
    }
    if let Some(w) = &def.spec.watch {
        let paths: Vec<String> = w.paths.iter().map(|p| rel(p)).collect();
        s += &format!(" | watch {paths:?}");
        if let Some(i) = &w.ignore {
            s += &format!(" | ignore_watch {i:?}");
        }
    }
    if let Some(c) = &def.spec.cron_restart {
        s += &format!(" | cron {c}");
    }
    if def.logs.log_type != LogType::Raw {
        s += &format!(" | log_type {:?}", def.logs.log_type);
    }
    if let Some(p) = &def.logs.log_file {
        s += &format!(" | log_file {}", rel(p.as_path()));
    }
    if !def.logs.merge_logs {
        s += " | merge_logs false";
    }
    if let Some(ns) = &def.namespace {
        s += &format!(" | namespace {ns}");
    }
    s
}

/// (folder, file, cwd inside the folder, --env, [apps' summaries], [warnings' fragments])
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static [&'static str],
    &'static [&'static str],
);

const CASES: &[Case] = &[
    (
        "ecobackend",
        "ecosystem.config.js",
        ".",
        None,
        &[
            "ecobackend | node server.js | Node cluster x2 | cwd . | env NODE_ENV=production | out logs/out.log | err logs/err.log | time YYYY-MM-DD HH:mm:ss | mmr 500M",
        ],
        &[
        ],
    ),
    (
        "task-6.2hd",
        "ecosystem.config.js",
        ".",
        Some("production"),
        &[
            "task6.2hd | node index.js | Node cluster xmax | cwd . | env NODE_ENV=production,PORT=80",
        ],
        &[
        ],
    ),
    (
        "webrtc-signaling-server",
        "ecosystem.config.js",
        ".",
        Some("production"),
        &[
            "app | node build/server.js | Node cluster xmax | cwd . | env NODE_PORT=3100,NODE_ENV=production | out pm2-logs/out/out.log | err pm2-logs/error/err.log",
        ],
        &[
        ],
    ),
    (
        "echo-python",
        "p1/ecosystem.config.js",
        "p1",
        Some("production"),
        &[
            "echo-python | python p1/hello.py arg1 arg2 | Generic fork x4 | cwd p1 | env ENV=production,PORT=5001 | +PYTHONUNBUFFERED | mmr 1024M | restart Never 0ms x16 | watch []",
            "echo-python-3 | python p1/hello.py | Generic fork x1 | cwd p1 | +PYTHONUNBUFFERED",
        ],
        &[
            "app 'echo-python': pm2's 'pid' is not done by herd (ignored): herd writes no pid files: `herd jlist` or `herd show --json` give the pids",
        ],
    ),
    (
        "jiradataxl",
        "ecosystem.config.js",
        ".",
        None,
        &[
            "dataapp-web | python web_app.py | Generic fork x1 | cwd . | env PORT=3545,PYTHONUNBUFFERED=1 | out logs/pm2-out.log | err logs/pm2-error.log | time YYYY-MM-DDTHH:mm:ss | mmr 1024M | log_file logs/pm2-combined.log",
        ],
        &[
        ],
    ),
    (
        "firtree-backend",
        "ecosystem.config.js",
        ".",
        Some("production"),
        &[
            "api-jdr | bash -c node server.js | Generic fork x1 | cwd .",
        ],
        &[
            "pm2's 'deploy' is not done by herd (ignored): herd does not deploy (ssh, git pull, post-deploy hooks): use your CI or a deploy tool, then `herd start FILE --env NAME` on the host; its env sections are not read",
            "no app has env_production: --env production changed nothing",
        ],
    ),
    (
        "ekta",
        "ecosystem.config.js",
        ".",
        Some("prod"),
        &[
            r#"EKTA | bash -c npm run start | Generic fork x1 | cwd . | env NODE_ENV=prod,DEBUG=false | out .pm2/out.log | err .pm2/err.log | mmr 2048M | restart Never 5ms x5 | wait_ready | instance_var INSTANCE_ID"#,
        ],
        &[
            "app 'EKTA': pm2's 'vizion' is not done by herd (ignored): herd reads no git metadata",
            r#"EKTA: args ["one", "two"] ignored: script 'npm run start' is a command, run as `bash -c` (pm2 drops its args too); put them in the command"#,
        ],
    ),
    (
        "mapcode",
        "ecosystem.config.js",
        ".",
        Some("production"),
        &[
            "ProjectM | node bin/www | Generic fork x1 | cwd . | env NODE_ENV=production",
        ],
        &[
            "pm2's 'deploy' is not done by herd (ignored): herd does not deploy (ssh, git pull, post-deploy hooks): use your CI or a deploy tool, then `herd start FILE --env NAME` on the host; its env sections are not read",
        ],
    ),
    (
        "seamanfares",
        "ecosystem.config.js",
        ".",
        None,
        &[
            r#"app | node app.js | Node fork x1 | cwd . | out data/logs/console.log | err data/logs/err.log | time YYYY-MM-DDTHH:mm:ss | restart Never 0ms x2 | watch [] | ignore_watch ["node_modules", "data/logs", "build/images"]"#,
        ],
        &[
            "app 'app': log_type 'format' is no log type (pm2 knows 'json'): lines are written as the app writes them",
        ],
    ),
    (
        "osz-backend",
        "config/ecosystem.config.js",
        ".",
        None,
        &[
            "server | node index.js | Node fork x1 | cwd . | out dev/log/child-out.log | err dev/log/child-err.log | time YYYY-MM-DD HH:mm:ss | watch [] | cron 0 0 * * * | namespace Backend",
        ],
        &[],
    ),
    (
        "formdee",
        "ecosystem.config.js",
        ".",
        None,
        &[
            "formdee | node --max-old-space-size=2048 npm start | Generic fork x1 | cwd . | env NODE_ENV=production,NODE_OPTIONS=--max-old-space-size=2048 | out logs/pm2-out.log | err logs/pm2-error.log | time YYYY-MM-DDTHH:mm:ss | mmr 2048M | log_file logs/pm2-combined.log",
        ],
        &[
        ],
    ),
    (
        "node-micro-services",
        "process.yml",
        ".",
        None,
        &[
            "api | node services/example-api/app.js | Node cluster x1 | cwd . | out logs/eample-api.log | watch []",
            "engine | node services/example-engine/app.js | Node cluster x1 | cwd . | out logs/eample-engine.log | watch []",
        ],
        &[
        ],
    ),
    (
        "crawler",
        "process.yml",
        ".",
        None,
        &[
            "crawler | node index.mjs | Node cluster xmax | cwd .",
        ],
        &[
        ],
    ),
    (
        "1ibrary",
        "ecosystem.json",
        ".",
        Some("production"),
        &[
            "1ibrary | node app.js | Node fork x1 | cwd . | env COMMON_VARIABLE=true,NODE_ENV=production",
        ],
        &[
            "pm2's 'deploy' is not done by herd (ignored): herd does not deploy (ssh, git pull, post-deploy hooks): use your CI or a deploy tool, then `herd start FILE --env NAME` on the host; its env sections are not read",
        ],
    ),
    (
        "docker-pm2",
        "process.yml",
        ".",
        None,
        &[
            "app | node app.js | Node cluster x2 | cwd . | env NODE_ENV=production | watch []",
        ],
        &[
        ],
    ),
    (
        "pm2-perfmonitor",
        "ecosystem.dev.config.cjs",
        ".",
        None,
        &[
            "app2 | node test/test.js | Node cluster x4 | cwd .",
            r#"pm2-perfmonitor | node lib/app.js | Node fork x1 | cwd . | env NODE_ENV=development | watch [] | ignore_watch ["node_modules", ".git"]"#,
        ],
        &[
        ],
    ),
];

#[test]
fn real_pm2_files_read_into_what_pm2_would_run() {
    let mut failures = Vec::new();
    let mut seen = 0;
    for (folder, file, cwd, profile, want_apps, want_warnings) in CASES {
        let dir = root().join(folder);
        let cwd = dir.join(cwd);
        let path = dir.join(file);
        let needs_node = !file.ends_with(".yml");
        if needs_node && !super::tests::node_available() {
            return;
        }
        let (apps, mut warnings) =
            load_from(&path, *profile, &cwd).unwrap_or_else(|e| panic!("{folder}: {}", e.0));
        let mut got = Vec::new();
        for app in &apps {
            let (def, w) =
                options::app_def_noting(&app.options, &app.daemon, &app.command, &app.base)
                    .unwrap_or_else(|e| panic!("{folder}: {}", e.0));
            warnings.extend(w.into_iter().map(|w| format!("{}: {w}", def.spec.name)));
            got.push(summary(&dir, app, &def));
        }
        let want: Vec<String> = want_apps.iter().map(|s| s.to_string()).collect();
        if got != want {
            failures.push(format!(
                "{folder}:\n  got:  {}\n  want: {}",
                got.join("\n        "),
                want.join("\n        ")
            ));
        }
        let all = warnings.join("\n");
        for fragment in *want_warnings {
            if !all.contains(fragment) {
                failures.push(format!("{folder}: no warning with {fragment:?} in:\n{all}"));
            }
        }
        if warnings.len() != want_warnings.len() {
            failures.push(format!(
                "{folder}: {} warnings, want {}:\n{all}",
                warnings.len(),
                want_warnings.len()
            ));
        }
        seen += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(seen >= 12, "{seen} files");
}
