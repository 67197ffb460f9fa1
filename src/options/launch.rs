//! What runs for an app's `script`, by pm2's rules (`lib/Common.js`:
//! `prepareAppConf`, `resolveInterpreter`, `verifyConfs`): where the script is
//! found, which interpreter runs it, and what a command string becomes.
//! [`resolve`] turns what the user wrote into the program, its arguments and
//! the kind of worker; it reads the file system (does the script exist? is it
//! binary?) but asks the machine for programs through [`Programs`], so the
//! rules can be tested without the interpreters installed.
//!
//! The rules, pm2's unless marked *herd*:
//! - the script is found relative to the app's `cwd` (or where herd is run),
//!   never the config file's folder; a bare name not found there is looked up
//!   in `PATH` (`script: 'npm'`);
//! - a script with a space that is no file is a command: `bash -c "<script>"`
//!   (`sh` without bash), with pm2's name (`"node server.js"` → `node server`);
//!   *herd*: a file whose name has a space runs as the file;
//! - by extension (*herd*: in any case): `.js .mjs .cjs` node, `.py` python
//!   (python3 when there is no `python`), `.sh` bash, `.rb` ruby, `.php` php,
//!   `.pl` perl, `.coffee` coffee, `.ls` lsc, `.ts .tsx` bun, else (*herd*,
//!   as pm2 7.0.4 does for `.ts`) node's type stripping (Node ≥ 22.6);
//!   *herd*: `.mts .cts` as `.ts`;
//! - any other file: binary → run as it is; text → node (pm2), except
//!   (*herd*) a text file that starts with `#!` runs by its `#!` line (pm2
//!   runs a bash script without extension with node, which fails);
//! - any interpreter whose name holds `python` sets `PYTHONUNBUFFERED=1`;
//! - `interpreter: 'none'` runs the script itself.
//!
//! `herd run` keeps the exec convention of its `COMMAND`
//! ([`Style::Argv`]): a bare word is a program in `PATH`, a program with
//! spaces in its name is no command string, and only a Node script
//! (`.js .mjs .cjs`) gets an interpreter by itself; anything else must be
//! executable.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use herd_engine::config::WorkerKind;

use super::text::expand_home;

/// Finds programs and Node's version: the machine's, or a test's.
pub trait Programs {
    /// The absolute path of an executable program: `name` in `PATH`, or
    /// `name` itself when it holds a `/`; why not, if not.
    fn find(&self, name: &str) -> Result<PathBuf, String>;
    /// The (major, minor) version of the `node` in `PATH`.
    fn node_version(&self) -> Option<(u32, u32)>;
}

/// This machine.
pub struct System;

impl Programs for System {
    fn find(&self, name: &str) -> Result<PathBuf, String> {
        herd_engine::resolve_program(name).map_err(|e| e.to_string())
    }

    fn node_version(&self) -> Option<(u32, u32)> {
        let out = std::process::Command::new("node")
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        parse_node_version(&String::from_utf8_lossy(&out.stdout))
    }
}

/// `v22.6.0` → (22, 6).
fn parse_node_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// How the first word of a command is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// pm2's `script` (`herd start`, process files, herd.toml's `script`).
    #[default]
    Script,
    /// An argv, as exec takes it (`herd run`, herd.toml's `command`).
    Argv,
}

/// What the user wrote.
pub struct Request<'a> {
    pub script: &'a str,
    pub args: &'a [String],
    /// `interpreter` / `exec_interpreter` / `--interpreter`.
    pub interpreter: Option<&'a str>,
    /// `node_args` / `interpreter_args`.
    pub interpreter_args: &'a [String],
    /// The app's working directory (absolute): scripts are found from here.
    pub cwd: &'a Path,
    pub style: Style,
    /// The config file the app comes from, for a hint when a script is
    /// missing.
    pub config_file: Option<&'a Path>,
}

/// What runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program executed (absolute).
    pub program: PathBuf,
    /// Its arguments (after argv\[0\]).
    pub args: Vec<String>,
    pub kind: WorkerKind,
    /// pm2's `exec_interpreter`: `node`, `python3`, `bash`, `none` …
    pub interpreter: String,
    /// The script file (pm2's `pm_exec_path`), when there is one.
    pub script: Option<PathBuf>,
    /// Variables the interpreter wants (`PYTHONUNBUFFERED=1`).
    pub env: Vec<(String, String)>,
    /// The app's name when none is given, by pm2's rule.
    pub name: String,
    pub warnings: Vec<String>,
}

/// pm2's default name: the script's base name, cut at its last dot (not a
/// leading one): `./api/server.js` → `server`, `"node server.js"` →
/// `node server`, `"npm run start"` → `npm run start`.
pub fn default_name(script: &str) -> String {
    let trimmed = script.trim_end_matches('/');
    let base = trimmed.rsplit('/').next().unwrap_or(trimmed);
    match base.rfind('.') {
        Some(dot) if dot > 0 => base[..dot].to_string(),
        _ => base.to_string(),
    }
}

/// Does this program name a Node.js (pm2: `node`, or any name ending in `node`)?
pub fn is_node(program: &str) -> bool {
    let base = program.rsplit('/').next().unwrap_or(program);
    base.ends_with("node") || base == "nodejs"
}

/// Does this interpreter make pm2 choose cluster mode by itself (node or bun)?
pub fn clusters_by_default(interpreter: &str) -> bool {
    let base = interpreter.rsplit('/').next().unwrap_or(interpreter);
    is_node(base) || base.ends_with("bun")
}

/// Extensions with an interpreter of their own (lower case, with the dot).
const BY_EXTENSION: &[(&str, &str)] = &[
    (".js", "node"),
    (".mjs", "node"),
    (".cjs", "node"),
    (".sh", "bash"),
    (".py", "python"),
    (".rb", "ruby"),
    (".php", "php"),
    (".pl", "perl"),
    (".coffee", "coffee"),
    (".ls", "lsc"),
    (".ts", "bun"),
    (".mts", "bun"),
    (".cts", "bun"),
    (".tsx", "bun"),
];

fn extension(path: &str) -> Option<String> {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.rfind('.')
        .filter(|&dot| dot > 0)
        .map(|dot| base[dot..].to_ascii_lowercase())
}

fn interpreter_by_extension(path: &str) -> Option<&'static str> {
    let ext = extension(path)?;
    BY_EXTENSION
        .iter()
        .find(|(e, _)| *e == ext)
        .map(|(_, interp)| *interp)
}

/// Resolves what runs for `req`; the error says what is wrong and what to do.
pub fn resolve(req: &Request, programs: &dyn Programs) -> Result<Launch, String> {
    let script = req.script;
    if script.trim().is_empty() {
        return Err("the script is empty: give the file or program to run".into());
    }
    let name = default_name(script);
    let mut warnings = Vec::new();

    if req.style == Style::Script && script == "serve" && !req.cwd.join("serve").exists() {
        return Err("script 'serve' is pm2's built-in static file server, which herd does not have: run one as the app instead (script: 'npx', args: 'serve -s build -l 8080', or python3 -m http.server)".into());
    }

    // A command string, as pm2 runs it.
    if req.style == Style::Script && script.contains(' ') && !req.cwd.join(script).is_file() {
        let shell = programs
            .find("bash")
            .or_else(|_| programs.find("sh"))
            .map_err(|_| format!("cannot run the command '{script}': it needs bash or sh, and neither is in PATH"))?;
        if !req.args.is_empty() {
            warnings.push(format!(
                "args {:?} ignored: script '{script}' is a command, run as `bash -c` (pm2 drops its args too); put them in the command",
                req.args
            ));
        }
        if req.interpreter.is_some_and(|i| i != "none") {
            warnings.push(format!(
                "interpreter ignored: script '{script}' is a command, run by bash"
            ));
        }
        if !req.interpreter_args.is_empty() {
            warnings.push(format!(
                "node_args/interpreter_args ignored: script '{script}' is a command, run by bash; put them in the command"
            ));
        }
        return Ok(Launch {
            program: shell,
            args: vec!["-c".into(), script.to_string()],
            kind: WorkerKind::Generic,
            interpreter: "none".into(),
            script: None,
            env: Vec::new(),
            name,
            warnings,
        });
    }

    let path = locate(req, programs)?;
    let path_text = path.to_string_lossy().into_owned();
    let mut env = Vec::new();
    let python_env = |interp: &str, env: &mut Vec<(String, String)>| {
        if interp.contains("python") {
            env.push(("PYTHONUNBUFFERED".to_string(), "1".to_string()));
        }
    };
    // Runs `path` with `interp`: [interp, ...interpreter_args, path, ...args].
    let with = |interp_path: PathBuf, interp: &str, kind: WorkerKind, extra: &[String]| {
        let mut args: Vec<String> = extra.to_vec();
        args.extend(req.interpreter_args.iter().cloned());
        args.push(path_text.clone());
        args.extend(req.args.iter().cloned());
        (interp_path, args, kind, interp.to_string())
    };

    let (program, args, kind, interpreter) = match req.interpreter {
        Some("none") => {
            if !req.interpreter_args.is_empty() {
                warnings.push(format!(
                    "node_args/interpreter_args ignored: interpreter 'none' runs {} itself (pm2 drops them too)",
                    path.display()
                ));
            }
            let program = programs.find(&path_text).map_err(|e| {
                format!(
                    "cannot run {}: {e}; make it executable, or give an interpreter",
                    path.display()
                )
            })?;
            let kind = if is_node(&path_text) {
                WorkerKind::Node
            } else {
                WorkerKind::Generic
            };
            (program, req.args.to_vec(), kind, "none".to_string())
        }
        Some(given) => {
            let given = nvm_node(given)?.unwrap_or_else(|| given.to_string());
            let given = expand_home(&given)?.to_string_lossy().into_owned();
            let found = programs.find(&given).map_err(|e| {
                format!("interpreter {given}: {e}; install it, or give another interpreter (a name in PATH or a path)")
            })?;
            python_env(&given, &mut env);
            let kind = if is_node(&given) {
                WorkerKind::Node
            } else {
                WorkerKind::Generic
            };
            with(found, &given, kind, &[])
        }
        // `herd run` keeps exec's meaning: only a Node script gets an
        // interpreter by itself; anything else must be executable.
        None if req.style == Style::Argv
            && interpreter_by_extension(&path_text) != Some("node") =>
        {
            let program = programs.find(&path_text).map_err(|e| {
                format!(
                    "cannot run {}: {e}; make it executable, or give an --interpreter",
                    path.display()
                )
            })?;
            let kind = if is_node(&path_text) {
                WorkerKind::Node
            } else {
                WorkerKind::Generic
            };
            (program, req.args.to_vec(), kind, "none".to_string())
        }
        None => match interpreter_by_extension(&path_text) {
            Some("bun") => {
                let tsx = extension(&path_text).as_deref() == Some(".tsx");
                match programs.find("bun") {
                    Ok(bun) => with(bun, "bun", WorkerKind::Generic, &[]),
                    Err(_) if tsx => {
                        return Err(format!(
                            "cannot run {}: a .tsx script needs bun, which is not in PATH: install bun (npm install -g bun), or give an interpreter",
                            path.display()
                        ))
                    }
                    Err(_) => {
                        let node = programs.find("node").map_err(|_| {
                            format!("cannot run {}: a TypeScript script needs bun or Node.js ≥ 22.6, and neither is in PATH: install one, or give an interpreter", path.display())
                        })?;
                        let flag = match programs.node_version() {
                            Some((major, minor)) if (major, minor) >= (23, 6) || (major == 22 && minor >= 18) => None,
                            Some((major, minor)) if (major == 22 && minor >= 6) || major == 23 => {
                                Some("--experimental-strip-types".to_string())
                            }
                            version => {
                                let v = version.map_or("unknown".to_string(), |(a, b)| format!("{a}.{b}"));
                                return Err(format!(
                                    "cannot run {}: a TypeScript script needs bun, or Node.js ≥ 22.6 to strip its types, and this node is {v}: install bun (npm install -g bun) or a newer Node.js, or compile it to .js",
                                    path.display()
                                ));
                            }
                        };
                        with(node, "node", WorkerKind::Node, flag.as_slice())
                    }
                }
            }
            Some("python") => {
                let (found, interp) = match programs.find("python") {
                    Ok(p) => (p, "python"),
                    Err(_) => (
                        programs.find("python3").map_err(|_| {
                            format!("cannot run {}: neither python nor python3 is in PATH: install Python, or give an interpreter", path.display())
                        })?,
                        "python3",
                    ),
                };
                python_env(interp, &mut env);
                with(found, interp, WorkerKind::Generic, &[])
            }
            Some(interp) => {
                let found = programs.find(interp).map_err(|e| {
                    format!("cannot run {} with {interp} (by its extension): {e}; install {interp}, or give an interpreter", path.display())
                })?;
                let kind = if interp == "node" {
                    WorkerKind::Node
                } else {
                    WorkerKind::Generic
                };
                with(found, interp, kind, &[])
            }
            None => match Contents::of(&path) {
                _ if is_node(&path_text) => {
                    let program = programs.find(&path_text)?;
                    (
                        program,
                        req.args.to_vec(),
                        WorkerKind::Node,
                        "none".to_string(),
                    )
                }
                Contents::Binary => {
                    let program = programs
                        .find(&path_text)
                        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
                    if !req.interpreter_args.is_empty() {
                        warnings.push(format!(
                            "node_args/interpreter_args ignored: {} is a program, run as it is (pm2 drops them too)",
                            path.display()
                        ));
                    }
                    (
                        program,
                        req.args.to_vec(),
                        WorkerKind::Generic,
                        "none".to_string(),
                    )
                }
                Contents::Shebang(line) => {
                    let (interp, interp_args) = shebang(&line);
                    if !req.interpreter_args.is_empty() {
                        // `script: 'npm', node_args: '--max-old-space-size=…'`:
                        // the #! interpreter with them, as pm2 runs npm with node.
                        let found = programs.find(&interp).map_err(|e| {
                            format!(
                                "cannot run {} with {interp} (its #! line): {e}",
                                path.display()
                            )
                        })?;
                        python_env(&interp, &mut env);
                        with(found, &interp, WorkerKind::Generic, &interp_args)
                    } else {
                        match programs.find(&path_text) {
                            Ok(program) => {
                                (program, req.args.to_vec(), WorkerKind::Generic, interp)
                            }
                            // Not executable: its #! interpreter runs it.
                            Err(_) => {
                                let found = programs.find(&interp).map_err(|e| {
                                    format!(
                                        "cannot run {} with {interp} (its #! line): {e}",
                                        path.display()
                                    )
                                })?;
                                python_env(&interp, &mut env);
                                with(found, &interp, WorkerKind::Generic, &interp_args)
                            }
                        }
                    }
                }
                Contents::Text => {
                    let node = programs.find("node").map_err(|e| {
                        format!("cannot run {} with node (a text file without #! line, as pm2 runs it): {e}; give an interpreter", path.display())
                    })?;
                    with(node, "node", WorkerKind::Node, &[])
                }
            },
        },
    };
    Ok(Launch {
        program,
        args,
        kind,
        interpreter,
        script: Some(path),
        env,
        name,
        warnings,
    })
}

/// Where the script is, absolute.
fn locate(req: &Request, programs: &dyn Programs) -> Result<PathBuf, String> {
    let script = req.script;
    let expanded = expand_home(script)?;
    let candidate = clean(&req.cwd.join(&expanded));
    let bare = !script.contains('/');
    let lookup_first =
        req.style == Style::Argv && bare && interpreter_by_extension(script).is_none();
    if !lookup_first {
        if candidate.is_dir() {
            return Err(format!(
                "{} is a directory: give the file to run (its script)",
                candidate.display()
            ));
        }
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    if bare && (lookup_first || req.style == Style::Script) {
        if let Ok(found) = programs.find(script) {
            return Ok(found);
        }
    }
    if lookup_first {
        return Err(format!(
            "cannot run '{script}': command not found in PATH; give its path (./{script}) or install it"
        ));
    }
    let mut msg = format!("script not found: no such file {}", candidate.display());
    if bare {
        msg.push_str(&format!(" (nor '{script}' in PATH)"));
    }
    // The mistake pm2 users make: a config in a subfolder, its script beside it.
    if let Some(dir) = req.config_file.and_then(Path::parent) {
        let beside = clean(
            &std::path::absolute(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .join(&expanded),
        );
        if beside != candidate && beside.is_file() {
            msg.push_str(&format!(
                "; there is {} beside the config file, but scripts are found from the app's cwd (or where herd runs), as under pm2: run herd from {}, or set cwd in the file (cwd: __dirname in a .js file)",
                beside.display(),
                dir.display()
            ));
            return Err(msg);
        }
    }
    msg.push_str(&format!(
        "; paths are taken from the app's cwd ({}): check the path, or set cwd",
        req.cwd.display()
    ));
    Err(msg)
}

/// pm2's `node@X.Y.Z`: that version as nvm installed it.
fn nvm_node(interpreter: &str) -> Result<Option<String>, String> {
    let Some(version) = interpreter.strip_prefix("node@") else {
        return Ok(None);
    };
    let Some(nvm) = std::env::var_os("NVM_DIR") else {
        return Err(format!(
            "interpreter {interpreter}: picks a Node.js installed by nvm, and NVM_DIR is not set: install nvm and `nvm install {version}`, or give the path of a node"
        ));
    };
    let node = PathBuf::from(nvm).join(format!("versions/node/v{version}/bin/node"));
    if !node.is_file() {
        return Err(format!(
            "interpreter {interpreter}: {} does not exist: `nvm install {version}` first",
            node.display()
        ));
    }
    Ok(Some(node.to_string_lossy().into_owned()))
}

/// What the first bytes of a script say about it.
#[derive(Debug, PartialEq, Eq)]
enum Contents {
    Binary,
    /// A text file whose first line is `#!…` (without the `#!`).
    Shebang(String),
    Text,
}

impl Contents {
    /// pm2's test (npm `isbinaryfile`, its own words here): a NUL byte in the
    /// first 512, or more than 10% of them control bytes, is binary.
    fn of(path: &Path) -> Contents {
        let mut head = Vec::with_capacity(512);
        if let Ok(f) = std::fs::File::open(path) {
            let _ = f.take(512).read_to_end(&mut head);
        }
        if head.starts_with(b"#!") {
            let line = head[2..].split(|&b| b == b'\n').next().unwrap_or_default();
            return Contents::Shebang(String::from_utf8_lossy(line).trim().to_string());
        }
        if head.contains(&0) {
            return Contents::Binary;
        }
        let control = head
            .iter()
            .filter(|&&b| b < 32 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c | 0x08 | 0x1b))
            .count();
        if !head.is_empty() && control * 10 > head.len() {
            Contents::Binary
        } else {
            Contents::Text
        }
    }
}

/// `/usr/bin/env node` → (`node`, []); `/bin/bash -e` → (`/bin/bash`, [`-e`]);
/// `/usr/bin/env -S node --flag` → (`node`, [`--flag`]).
fn shebang(line: &str) -> (String, Vec<String>) {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or("sh").to_string();
    let mut rest: Vec<String> = words.map(str::to_string).collect();
    if first.rsplit('/').next() == Some("env") && !rest.is_empty() {
        if rest[0] == "-S" {
            rest.remove(0);
        }
        if !rest.is_empty() {
            let interp = rest.remove(0);
            return (interp, rest);
        }
    }
    (first, rest)
}

/// `path` without `.` components.
fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

#[cfg(test)]
mod tests;
