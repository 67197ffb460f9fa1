//! Which paths the watcher watches and which changes count: the roots of a
//! [`WatchSpec`] (folders, files, globs) made absolute from the app's
//! working directory, and its ignore rules. Pure: no file system access, so
//! every rule is tested here.
//!
//! - A folder root is watched with every folder under it that is not
//!   ignored; a file root through its parent folder (an editor that saves by
//!   renaming a new file over the old one replaces the file's inode, so a
//!   watch on the file itself would go deaf); a glob root (`src/**/*.ts`)
//!   through the folder before its first glob, its changes filtered by it.
//! - Ignore rules apply below a root only (a root named on purpose counts
//!   even if it is a dot-folder): pm2's default (a name starting with a dot,
//!   or `node_modules`), or the app's globs (see [`WatchSpec::ignore`]).
//!   pm2 tests its default against the whole absolute path, so an app under
//!   `~/.apps/` watches nothing there; herd does not.

use std::path::{Component, Path, PathBuf};

use globset::{GlobMatcher, GlobSet, GlobSetBuilder};

use crate::config::{is_glob, WatchSpec};

/// The watched roots and the rules, for one app.
#[derive(Debug)]
pub(crate) struct Filter {
    roots: Vec<Root>,
    ignore: Ignore,
    /// Path prefixes never counted (herd's own log files).
    exclude: Vec<String>,
}

#[derive(Debug)]
struct Root {
    /// The folder that is watched.
    base: PathBuf,
    kind: RootKind,
}

#[derive(Debug)]
enum RootKind {
    /// The folder and everything under it.
    Tree,
    /// This one file (in `base`).
    File(PathBuf),
    /// What the glob matches under `base`.
    Glob(GlobMatcher),
}

#[derive(Debug)]
enum Ignore {
    /// pm2's: names starting with a dot, and `node_modules`.
    Default,
    Rules {
        /// Globs with a `/`, absolute, each also covering its subtree.
        paths: GlobSet,
        /// Globs without one, matched against each name.
        names: GlobSet,
    },
}

/// A folder to watch: its path, and whether the folders under it are watched too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatchDir {
    pub(crate) path: PathBuf,
    pub(crate) recursive: bool,
}

impl Filter {
    /// The filter of `spec` for an app working in `cwd` (absolute).
    pub(crate) fn new(spec: &WatchSpec, cwd: &Path) -> Result<Filter, String> {
        let cwd = normal(cwd);
        let mut roots = Vec::new();
        if spec.paths.is_empty() {
            roots.push(Root {
                base: cwd.clone(),
                kind: RootKind::Tree,
            });
        }
        for path in &spec.paths {
            let text = path.to_string_lossy().into_owned();
            if is_glob(&text) {
                let absolute = absolute_glob(&cwd, &text);
                let glob = crate::config::glob(&absolute)
                    .map_err(|e| format!("watch pattern '{text}': {e}"))?;
                roots.push(Root {
                    base: literal_base(&cwd, &text),
                    kind: RootKind::Glob(glob.compile_matcher()),
                });
                continue;
            }
            let path = normal(&cwd.join(path));
            // A file root names a file; what does not exist yet is taken
            // as a folder (the watcher says it cannot watch it).
            if path.is_file() {
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                roots.push(Root {
                    base,
                    kind: RootKind::File(path),
                });
            } else {
                roots.push(Root {
                    base: path,
                    kind: RootKind::Tree,
                });
            }
        }
        let ignore = match &spec.ignore {
            None => Ignore::Default,
            Some(patterns) => {
                let (mut paths, mut names) = (GlobSetBuilder::new(), GlobSetBuilder::new());
                for pattern in patterns {
                    let bad = |e: String| format!("ignore_watch pattern '{pattern}': {e}");
                    let trimmed = pattern.trim().trim_end_matches('/');
                    if trimmed.is_empty() {
                        continue;
                    }
                    if trimmed.contains('/') {
                        let absolute = absolute_glob(&cwd, trimmed);
                        for p in [absolute.clone(), format!("{absolute}/**")] {
                            paths.add(crate::config::glob(&p).map_err(bad)?);
                        }
                    } else {
                        names.add(crate::config::glob(trimmed).map_err(bad)?);
                    }
                }
                Ignore::Rules {
                    paths: paths.build().map_err(|e| e.to_string())?,
                    names: names.build().map_err(|e| e.to_string())?,
                }
            }
        };
        Ok(Filter {
            roots,
            ignore,
            exclude: spec
                .exclude
                .iter()
                .map(|p| normal(&cwd.join(p)).to_string_lossy().into_owned())
                .collect(),
        })
    }

    /// The folders to watch first, one per root.
    pub(crate) fn roots(&self) -> Vec<WatchDir> {
        self.roots
            .iter()
            .map(|r| WatchDir {
                path: r.base.clone(),
                recursive: !matches!(r.kind, RootKind::File(_)),
            })
            .collect()
    }

    /// Is a change at `path` a change of the app?
    pub(crate) fn is_change(&self, path: &Path) -> bool {
        let text = path.to_string_lossy();
        if self.exclude.iter().any(|e| text.starts_with(e.as_str())) {
            return false;
        }
        self.roots.iter().any(|root| match &root.kind {
            RootKind::File(file) => path == file,
            RootKind::Tree => path.starts_with(&root.base) && !self.ignored(&root.base, path),
            RootKind::Glob(glob) => {
                path.starts_with(&root.base)
                    && glob.is_match(path)
                    && !self.ignored(&root.base, path)
            }
        })
    }

    /// Is `dir`, found under a root, a folder to watch too?
    pub(crate) fn descend(&self, dir: &Path) -> bool {
        self.roots.iter().any(|root| {
            !matches!(root.kind, RootKind::File(_))
                && dir.starts_with(&root.base)
                && !self.ignored(&root.base, dir)
        })
    }

    /// Do the rules ignore `path`, found under the root `base`?
    fn ignored(&self, base: &Path, path: &Path) -> bool {
        let below = path.strip_prefix(base).unwrap_or(path);
        let mut names = below.components().filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        });
        match &self.ignore {
            Ignore::Default => names.any(|n| {
                let n = n.as_encoded_bytes();
                n.starts_with(b".") || n == b"node_modules"
            }),
            Ignore::Rules {
                paths,
                names: rules,
            } => paths.is_match(path) || names.any(|n| rules.is_match(Path::new(n))),
        }
    }
}

/// `path` without `.` components and with `..` taken lexically.
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A glob made absolute: relative ones are taken from `cwd` (escaped, so a
/// folder named `[x]` is literal).
fn absolute_glob(cwd: &Path, pattern: &str) -> String {
    if pattern.starts_with('/') {
        return pattern.to_string();
    }
    let rest = pattern.trim_start_matches("./");
    let base = globset::escape(&cwd.to_string_lossy());
    format!("{}/{rest}", base.trim_end_matches('/'))
}

/// The folder before a glob's first component with glob syntax.
fn literal_base(cwd: &Path, pattern: &str) -> PathBuf {
    let mut base = if pattern.starts_with('/') {
        PathBuf::from("/")
    } else {
        cwd.to_path_buf()
    };
    for part in pattern.split('/') {
        if is_glob(part) {
            break;
        }
        base.push(part);
    }
    normal(&base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(paths: &[&str], ignore: Option<&[&str]>) -> WatchSpec {
        WatchSpec {
            paths: paths.iter().map(PathBuf::from).collect(),
            ignore: ignore.map(|i| i.iter().map(|s| s.to_string()).collect()),
            ..WatchSpec::default()
        }
    }

    fn changes(f: &Filter, paths: &[&str]) -> Vec<bool> {
        paths.iter().map(|p| f.is_change(Path::new(p))).collect()
    }

    #[test]
    fn pm2s_default_ignores_dot_names_and_node_modules_below_the_root_only() {
        // The app lives under a dot-folder: pm2 would ignore everything.
        let f = Filter::new(&spec(&[], None), Path::new("/home/u/.apps/web")).unwrap();
        assert_eq!(
            f.roots(),
            vec![WatchDir {
                path: "/home/u/.apps/web".into(),
                recursive: true
            }]
        );
        assert_eq!(
            changes(
                &f,
                &[
                    "/home/u/.apps/web/server.js",
                    "/home/u/.apps/web/src/a.js",
                    "/home/u/.apps/web/.git/index",
                    "/home/u/.apps/web/.env",
                    "/home/u/.apps/web/src/.a.js.swp",
                    "/home/u/.apps/web/node_modules/x/index.js",
                    "/home/u/.apps/web/lib/node_modules/y.js",
                    "/home/u/.apps/web/my_node_modules.js",
                    "/home/u/.apps/other.js",
                ]
            ),
            [true, true, false, false, false, false, false, true, false]
        );
        assert!(f.descend(Path::new("/home/u/.apps/web/src")));
        assert!(!f.descend(Path::new("/home/u/.apps/web/node_modules")));
        assert!(!f.descend(Path::new("/home/u/.apps/web/.git")));
    }

    #[test]
    fn ignore_globs_replace_the_default() {
        let f = Filter::new(
            &spec(
                &[],
                Some(&["node_modules", "*.log", "logs/", "data/*.json", "\\.cache"]),
            ),
            Path::new("/srv/app"),
        )
        .unwrap();
        assert_eq!(
            changes(
                &f,
                &[
                    "/srv/app/server.js",
                    // A name without '/' matches at any depth.
                    "/srv/app/node_modules/x.js",
                    "/srv/app/pkg/node_modules/x.js",
                    "/srv/app/out.log",
                    "/srv/app/src/deep/err.log",
                    "/srv/app/logs/today.txt",
                    "/srv/app/src/logs/x.js",
                    // A path glob is anchored at the cwd, and covers a subtree.
                    "/srv/app/data/a.json",
                    "/srv/app/data/a.csv",
                    "/srv/app/src/data/a.json",
                    "/srv/app/.cache/z",
                    // The default is replaced: dotfiles count now.
                    "/srv/app/.env",
                ]
            ),
            [true, false, false, false, false, false, false, false, true, true, false, true]
        );
        assert!(!f.descend(Path::new("/srv/app/logs")));
        assert!(f.descend(Path::new("/srv/app/.git")));
    }

    #[test]
    fn roots_are_folders_files_or_globs_from_the_cwd() {
        let dir = std::env::temp_dir().join(format!("herd-filter-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("server.js"), "").unwrap();
        let f = Filter::new(
            &spec(&["./src", "server.js", "lib/**/*.ts", "../shared/"], None),
            &dir,
        )
        .unwrap();
        let shared = normal(&dir.join("../shared"));
        assert_eq!(
            f.roots(),
            vec![
                WatchDir {
                    path: dir.join("src"),
                    recursive: true
                },
                WatchDir {
                    path: dir.clone(),
                    recursive: false
                },
                WatchDir {
                    path: dir.join("lib"),
                    recursive: true
                },
                WatchDir {
                    path: shared.clone(),
                    recursive: true
                },
            ]
        );
        let p = |s: &str| dir.join(s);
        assert!(f.is_change(&p("src/a.js")));
        assert!(f.is_change(&p("server.js")));
        // The file root's folder is watched, its other files are not changes.
        assert!(!f.is_change(&p("other.js")));
        assert!(f.is_change(&p("lib/x/y.ts")));
        assert!(!f.is_change(&p("lib/x/y.js")));
        assert!(f.is_change(&shared.join("util.js")));
        // The file root is not ignored for being a dotfile, nor walked into.
        std::fs::write(dir.join(".env"), "").unwrap();
        let f = Filter::new(&spec(&[".env"], None), &dir).unwrap();
        assert!(f.is_change(&p(".env")));
        assert!(!f.descend(&p("src")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn herds_own_log_files_never_count_rotated_ones_neither() {
        let mut s = spec(&[], None);
        s.exclude = vec!["logs/out.log".into(), "/srv/app/err.log".into()];
        let f = Filter::new(&s, Path::new("/srv/app")).unwrap();
        assert_eq!(
            changes(
                &f,
                &[
                    "/srv/app/logs/out.log",
                    "/srv/app/logs/out.log.1",
                    "/srv/app/err.log",
                    "/srv/app/logs/other.log",
                ]
            ),
            [false, false, false, true]
        );
    }

    #[test]
    fn a_cwd_with_glob_characters_is_literal() {
        let f = Filter::new(&spec(&["*.js"], Some(&["tmp/*"])), Path::new("/srv/[app]")).unwrap();
        assert!(f.is_change(Path::new("/srv/[app]/a.js")));
        assert!(!f.is_change(Path::new("/srv/a/a.js")));
        let f = Filter::new(&spec(&[], Some(&["tmp/*"])), Path::new("/srv/[app]")).unwrap();
        assert!(!f.is_change(Path::new("/srv/[app]/tmp/x")));
        assert!(f.is_change(Path::new("/srv/[app]/src/x")));
    }
}
