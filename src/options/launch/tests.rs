use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use super::*;

/// A machine with these programs in PATH (at /bin/NAME) and this node.
struct Fake {
    programs: HashMap<&'static str, PathBuf>,
    node: Option<(u32, u32)>,
}

impl Fake {
    fn with(names: &[&'static str]) -> Fake {
        Fake {
            programs: names
                .iter()
                .map(|n| (*n, PathBuf::from(format!("/bin/{n}"))))
                .collect(),
            node: Some((20, 20)),
        }
    }
}

impl Programs for Fake {
    fn find(&self, name: &str) -> Result<PathBuf, String> {
        if name.contains('/') {
            let p = Path::new(name);
            let executable = p
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if executable || self.programs.values().any(|v| v == p) {
                return Ok(p.to_path_buf());
            }
            return Err(format!("{name} is not executable"));
        }
        self.programs
            .get(name)
            .cloned()
            .ok_or_else(|| format!("command not found: {name}"))
    }
    fn node_version(&self) -> Option<(u32, u32)> {
        self.node
    }
}

fn file(dir: &Path, name: &str, text: &[u8], executable: bool) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn req<'a>(script: &'a str, cwd: &'a Path) -> Request<'a> {
    Request {
        script,
        args: &[],
        interpreter: None,
        interpreter_args: &[],
        cwd,
        style: Style::Script,
        config_file: None,
    }
}

const EVERYTHING: &[&str] = &[
    "node", "python", "python3", "bash", "sh", "ruby", "php", "perl", "bun", "coffee", "lsc", "npm",
];

#[test]
fn interpreters_by_extension_as_pm2_maps_them() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    // (script, interpreter shown, program run, kind, extra env)
    let table: &[(&str, &str, &str, WorkerKind, bool)] = &[
        ("app.js", "node", "/bin/node", WorkerKind::Node, false),
        ("app.mjs", "node", "/bin/node", WorkerKind::Node, false),
        ("app.cjs", "node", "/bin/node", WorkerKind::Node, false),
        ("APP.JS", "node", "/bin/node", WorkerKind::Node, false),
        ("app.py", "python", "/bin/python", WorkerKind::Generic, true),
        ("job.sh", "bash", "/bin/bash", WorkerKind::Generic, false),
        ("app.rb", "ruby", "/bin/ruby", WorkerKind::Generic, false),
        ("app.php", "php", "/bin/php", WorkerKind::Generic, false),
        ("app.pl", "perl", "/bin/perl", WorkerKind::Generic, false),
        (
            "app.coffee",
            "coffee",
            "/bin/coffee",
            WorkerKind::Generic,
            false,
        ),
        ("app.ls", "lsc", "/bin/lsc", WorkerKind::Generic, false),
        ("app.ts", "bun", "/bin/bun", WorkerKind::Generic, false),
        ("app.tsx", "bun", "/bin/bun", WorkerKind::Generic, false),
        ("app.mts", "bun", "/bin/bun", WorkerKind::Generic, false),
    ];
    let programs = Fake::with(EVERYTHING);
    for (script, interp, program, kind, python) in table {
        let path = file(cwd, script, b"x = 1\n", false);
        let l = resolve(&req(script, cwd), &programs).unwrap_or_else(|e| panic!("{script}: {e}"));
        assert_eq!(l.interpreter, *interp, "{script}");
        assert_eq!(l.program, Path::new(program), "{script}");
        assert_eq!(l.args, [path.to_str().unwrap()], "{script}");
        assert_eq!(l.kind, *kind, "{script}");
        assert_eq!(l.script.as_deref(), Some(path.as_path()), "{script}");
        let unbuffered = l.env.contains(&("PYTHONUNBUFFERED".into(), "1".into()));
        assert_eq!(unbuffered, *python, "{script}");
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn python_is_python3_where_there_is_no_python() {
    let dir = tempfile::tempdir().unwrap();
    file(dir.path(), "app.py", b"print(1)\n", false);
    let l = resolve(&req("app.py", dir.path()), &Fake::with(&["python3"])).unwrap();
    assert_eq!(l.interpreter, "python3");
    assert_eq!(l.env, [("PYTHONUNBUFFERED".to_string(), "1".to_string())]);
    let err = resolve(&req("app.py", dir.path()), &Fake::with(&["node"])).unwrap_err();
    assert!(err.contains("neither python nor python3"), "{err}");
    // An interpreter named python-something sets PYTHONUNBUFFERED too (pm2).
    let mut r = req("app.py", dir.path());
    r.interpreter = Some("/venv/bin/python3.12");
    let venv = Fake {
        programs: [("x", PathBuf::from("/venv/bin/python3.12"))].into(),
        node: None,
    };
    let l = resolve(&r, &venv).unwrap();
    assert_eq!(l.program, Path::new("/venv/bin/python3.12"));
    assert_eq!(l.interpreter, "/venv/bin/python3.12");
    assert!(l.env.contains(&("PYTHONUNBUFFERED".into(), "1".into())));
}

#[test]
fn typescript_runs_with_bun_else_with_nodes_type_stripping() {
    let dir = tempfile::tempdir().unwrap();
    let ts = file(dir.path(), "app.ts", b"const x: number = 1;\n", false);
    file(dir.path(), "app.tsx", b"export {};\n", false);
    let ts = ts.to_str().unwrap();
    // (node version, flag before the script; None: an error)
    type Row = ((u32, u32), Option<&'static [&'static str]>);
    let table: &[Row] = &[
        ((20, 20), None),
        ((22, 5), None),
        ((22, 6), Some(&["--experimental-strip-types"])),
        ((22, 17), Some(&["--experimental-strip-types"])),
        ((22, 18), Some(&[])),
        ((23, 1), Some(&["--experimental-strip-types"])),
        ((23, 6), Some(&[])),
        ((24, 0), Some(&[])),
    ];
    for (version, flag) in table {
        let programs = Fake {
            node: Some(*version),
            ..Fake::with(&["node"])
        };
        let got = resolve(&req("app.ts", dir.path()), &programs);
        match flag {
            None => {
                let err = got.unwrap_err();
                assert!(
                    err.contains("needs bun, or Node.js ≥ 22.6"),
                    "{version:?}: {err}"
                );
            }
            Some(flag) => {
                let l = got.unwrap();
                let mut want: Vec<&str> = flag.to_vec();
                want.push(ts);
                assert_eq!(l.args, want, "{version:?}");
                assert_eq!((l.interpreter.as_str(), l.kind), ("node", WorkerKind::Node));
            }
        }
    }
    let err = resolve(&req("app.tsx", dir.path()), &Fake::with(&["node"])).unwrap_err();
    assert!(err.contains(".tsx script needs bun"), "{err}");
}

#[test]
fn other_files_binary_shebang_or_text() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let programs = Fake::with(EVERYTHING);
    // A binary runs as it is.
    let server = file(cwd, "server", b"\x7fELF\x02\x01\x01\0\0\0\0\0", true);
    let l = resolve(&req("./server", cwd), &programs).unwrap();
    assert_eq!(
        (l.program.as_path(), l.interpreter.as_str()),
        (server.as_path(), "none")
    );
    assert_eq!(l.kind, WorkerKind::Generic);
    // herd: a script with a #! line runs by it (pm2 would use node and fail).
    let job = file(cwd, "job", b"#!/bin/bash\necho hi\n", true);
    let l = resolve(&req("./job", cwd), &programs).unwrap();
    assert_eq!(
        (l.program.as_path(), l.interpreter.as_str()),
        (job.as_path(), "/bin/bash")
    );
    // …not executable: its #! interpreter runs it.
    let job2 = file(cwd, "job2", b"#!/usr/bin/env python3 -u\nprint(1)\n", false);
    let l = resolve(&req("./job2", cwd), &programs).unwrap();
    assert_eq!(l.program, Path::new("/bin/python3"));
    assert_eq!(l.args, ["-u", job2.to_str().unwrap()]);
    assert!(l.env.contains(&("PYTHONUNBUFFERED".into(), "1".into())));
    // A text file without #!: node, as pm2.
    let plain = file(cwd, "www", b"require('./app').listen(3000)\n", false);
    let l = resolve(&req("./www", cwd), &programs).unwrap();
    assert_eq!(l.program, Path::new("/bin/node"));
    assert_eq!(l.args, [plain.to_str().unwrap()]);
    assert_eq!((l.kind, l.interpreter.as_str()), (WorkerKind::Node, "node"));
    // A directory is no script.
    std::fs::create_dir(cwd.join("dist")).unwrap();
    let err = resolve(&req("dist", cwd), &programs).unwrap_err();
    assert!(err.contains("is a directory"), "{err}");
}

#[test]
fn npm_and_other_programs_are_found_in_path() {
    let dir = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    // npm as installed: a text file with a node #! line.
    let npm = file(
        bin.path(),
        "npm",
        b"#!/usr/bin/env node\nrequire('x')\n",
        true,
    );
    let programs = Fake {
        programs: [("npm", npm.clone()), ("node", PathBuf::from("/bin/node"))].into(),
        node: None,
    };
    let args = vec!["run".to_string(), "start".to_string()];
    let mut r = req("npm", dir.path());
    r.args = &args;
    let l = resolve(&r, &programs).unwrap();
    assert_eq!(l.program, npm);
    assert_eq!(l.args, ["run", "start"]);
    assert_eq!((l.name.as_str(), l.interpreter.as_str()), ("npm", "node"));
    // With node_args, node runs it with them (as pm2 runs npm with node).
    let node_args = vec!["--max-old-space-size=2048".to_string()];
    r.interpreter_args = &node_args;
    let l = resolve(&r, &programs).unwrap();
    assert_eq!(l.program, Path::new("/bin/node"));
    assert_eq!(
        l.args,
        [
            "--max-old-space-size=2048",
            npm.to_str().unwrap(),
            "run",
            "start"
        ]
    );
    // A file in the cwd comes first (pm2: path.resolve(cwd, script), then which).
    let local = file(dir.path(), "npm", b"\x7fELF\0", true);
    r.interpreter_args = &[];
    assert_eq!(resolve(&r, &programs).unwrap().program, local);
    // herd run: a bare word is a program in PATH, whatever the cwd holds.
    r.style = Style::Argv;
    assert_eq!(resolve(&r, &programs).unwrap().program, npm);
}

#[test]
fn herd_run_keeps_execs_meaning() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let programs = Fake::with(EVERYTHING);
    let argv = |script: &'static str| Request {
        style: Style::Argv,
        ..req(script, cwd)
    };
    // A Node script gets node; anything else runs as it is, if it can.
    let js = file(cwd, "app.js", b"1\n", false);
    let l = resolve(&argv("app.js"), &programs).unwrap();
    assert_eq!(
        (l.program.as_path(), l.args.clone()),
        (
            Path::new("/bin/node"),
            vec![js.to_str().unwrap().to_string()]
        )
    );
    file(cwd, "job.sh", b"#!/bin/sh\necho hi\n", false);
    let err = resolve(&argv("./job.sh"), &programs).unwrap_err();
    assert!(
        err.contains("make it executable, or give an --interpreter"),
        "{err}"
    );
    let run = file(cwd, "run.sh", b"#!/bin/sh\necho hi\n", true);
    assert_eq!(resolve(&argv("./run.sh"), &programs).unwrap().program, run);
}

#[test]
fn a_script_with_spaces_is_a_command_run_by_bash() {
    let dir = tempfile::tempdir().unwrap();
    let programs = Fake::with(&["bash", "sh", "node"]);
    // (script, pm2's name)
    let table = [
        ("node server.js", "node server"),
        ("npm run start", "npm run start"),
        ("npm run start:dev", "npm run start:dev"),
        ("node conf/app.js --flag", "app"),
        ("python3 -m http.server 8000", "python3 -m http"),
    ];
    for (script, name) in table {
        let l = resolve(&req(script, dir.path()), &programs).unwrap();
        assert_eq!(l.program, Path::new("/bin/bash"), "{script}");
        assert_eq!(l.args, ["-c", script], "{script}");
        assert_eq!((l.name.as_str(), l.interpreter.as_str()), (name, "none"));
        assert_eq!(l.kind, WorkerKind::Generic);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }
    // sh without bash.
    let l = resolve(&req("node server.js", dir.path()), &Fake::with(&["sh"])).unwrap();
    assert_eq!(l.program, Path::new("/bin/sh"));
    // pm2 drops args, interpreter and node_args of a command: herd says so.
    let args = vec!["one".to_string(), "two".to_string()];
    let node_args = vec!["--inspect".to_string()];
    let mut r = req("npm run start", dir.path());
    r.args = &args;
    r.interpreter = Some("node");
    r.interpreter_args = &node_args;
    let l = resolve(&r, &programs).unwrap();
    assert_eq!(l.args, ["-c", "npm run start"]);
    assert_eq!(l.warnings.len(), 3, "{:?}", l.warnings);
    assert!(
        l.warnings[0].contains("args [\"one\", \"two\"] ignored"),
        "{:?}",
        l.warnings
    );
    // herd: a file whose name has a space is that file.
    file(dir.path(), "my app.js", b"1\n", false);
    let l = resolve(&req("my app.js", dir.path()), &programs).unwrap();
    assert_eq!((l.name.as_str(), l.kind), ("my app", WorkerKind::Node));
    // herd run's argv has no command strings.
    let mut r = req("node server.js", dir.path());
    r.style = Style::Argv;
    assert!(resolve(&r, &programs).is_err());
}

#[test]
fn explicit_interpreters() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let programs = Fake::with(EVERYTHING);
    let app = file(cwd, "app.js", b"1\n", false);
    let app = app.to_str().unwrap();
    let node_args = vec!["-r".to_string(), "./pre.js".to_string()];
    let args = vec!["--port".to_string(), "3000".to_string()];
    let mut r = req("app.js", cwd);
    r.interpreter = Some("node");
    r.interpreter_args = &node_args;
    r.args = &args;
    let l = resolve(&r, &programs).unwrap();
    assert_eq!(l.args, ["-r", "./pre.js", app, "--port", "3000"]);
    assert_eq!(l.kind, WorkerKind::Node);
    // bun for a .js file: not a Node cluster worker.
    r.interpreter = Some("bun");
    let l = resolve(&r, &programs).unwrap();
    assert_eq!(
        (l.program.as_path(), l.kind),
        (Path::new("/bin/bun"), WorkerKind::Generic)
    );
    // none: the script itself, node_args dropped with a warning (pm2 drops them).
    let tool = file(cwd, "tool", b"\x7fELF\0", true);
    let mut r = req("./tool", cwd);
    r.interpreter = Some("none");
    r.interpreter_args = &node_args;
    let l = resolve(&r, &programs).unwrap();
    assert_eq!(
        (l.program.as_path(), l.interpreter.as_str()),
        (tool.as_path(), "none")
    );
    assert!(l.warnings[0].contains("ignored"), "{:?}", l.warnings);
    // A missing interpreter is an error that says what to do.
    let mut r = req("app.js", cwd);
    r.interpreter = Some("deno");
    let err = resolve(&r, &programs).unwrap_err();
    assert!(
        err.contains("interpreter deno") && err.contains("install it"),
        "{err}"
    );
    // pm2's node@version without nvm.
    r.interpreter = Some("node@18.20.0");
    if std::env::var_os("NVM_DIR").is_none() {
        let err = resolve(&r, &programs).unwrap_err();
        assert!(err.contains("NVM_DIR is not set"), "{err}");
    }
}

#[test]
fn missing_scripts_say_where_they_were_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    // pm2 start config/pm2.config.js, with config/app.js beside it.
    file(cwd, "config/app.js", b"1\n", false);
    let config = file(cwd, "config/pm2.config.js", b"", false);
    let mut r = req("app.js", cwd);
    r.config_file = Some(&config);
    let err = resolve(&r, &Fake::with(&["node"])).unwrap_err();
    assert!(
        err.contains(&format!(
            "script not found: no such file {}",
            cwd.join("app.js").display()
        )),
        "{err}"
    );
    assert!(err.contains("beside the config file"), "{err}");
    assert!(err.contains("cwd: __dirname"), "{err}");
    // Otherwise: the cwd it was looked for in.
    let err = resolve(&req("./nope.js", cwd), &Fake::with(&["node"])).unwrap_err();
    assert!(err.contains("paths are taken from the app's cwd"), "{err}");
    let err = resolve(&req("serve", cwd), &Fake::with(&["node"])).unwrap_err();
    assert!(err.contains("built-in static file server"), "{err}");
    assert!(resolve(&req(" ", cwd), &Fake::with(&[])).is_err());
}

#[test]
fn home_in_the_script_path() {
    let home = tempfile::tempdir().unwrap();
    let app = file(home.path(), "apps/api.js", b"1\n", false);
    // HOME is read at expansion time; the test sets no HOME of its own, so
    // build the expected path from what ~ expands to here.
    let expanded = expand_home("~/apps/api.js").unwrap();
    if expanded == app {
        let l = resolve(
            &req("~/apps/api.js", Path::new("/")),
            &Fake::with(&["node"]),
        )
        .unwrap();
        assert_eq!(l.script.as_deref(), Some(app.as_path()));
    }
    assert!(expanded.is_absolute());
}

#[test]
fn names_by_pm2s_rule() {
    let table = [
        ("app.js", "app"),
        ("./api/server.js", "server"),
        ("server.config.js", "server.config"),
        ("bin/www", "www"),
        (".hidden", ".hidden"),
        ("npm", "npm"),
        ("dist/", "dist"),
        ("node server.js", "node server"),
        ("~/apps/api.ts", "api"),
    ];
    for (script, name) in table {
        assert_eq!(default_name(script), name, "{script}");
    }
    for (interp, yes) in [
        ("node", true),
        ("/usr/local/bin/node", true),
        ("nodejs", true),
        ("bun", true),
        ("/home/u/.bun/bin/bun", true),
        ("python3", false),
        ("none", false),
    ] {
        assert_eq!(clusters_by_default(interp), yes, "{interp}");
    }
    assert_eq!(parse_node_version("v22.6.0\n"), Some((22, 6)));
    assert_eq!(parse_node_version("garbage"), None);
    assert_eq!(
        shebang("/usr/bin/env -S node --flag"),
        ("node".to_string(), vec!["--flag".to_string()])
    );
}
