//! What makes an app reload by itself: file changes ([`WatchSpec`], pm2's
//! `watch`, `ignore_watch`, `watch_delay`) and a schedule ([`CronSpec`],
//! pm2's `cron_restart`). Plain, checked data: a bad glob or cron pattern is
//! refused here, before anything starts. What they do at run time is the
//! supervisor's (`supervisor::triggers`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::{bad, duration_text, ConfigError};

/// Watch files and reload the app when they change.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct WatchSpec {
    /// What to watch: directories (with everything under them), files, or
    /// globs (`src/**/*.ts`). Relative paths are taken from the app's
    /// working directory. Empty: the app's working directory.
    pub paths: Vec<PathBuf>,
    /// Globs of paths whose changes are not a change of the app (pm2's
    /// `ignore_watch`). A glob without `/` matches a file or folder name at
    /// any depth (`node_modules`, `*.log`), as in `.gitignore`; one with `/`
    /// is a path, from the app's working directory unless absolute
    /// (`logs/*.txt`). A folder that matches is skipped whole. `None`:
    /// pm2's default, every name that starts with a dot, and `node_modules`;
    /// a list replaces that default.
    pub ignore: Option<Vec<String>>,
    /// Wait this long after a change before reloading (pm2's
    /// `watch_delay`); changes meanwhile join that reload.
    #[serde(with = "duration_text")]
    pub delay: Duration,
    /// Files herd itself writes (the app's log files): never a change of the
    /// app. Compared as a prefix of the path, so that rotated files
    /// (`out.log.1`) are skipped too.
    pub exclude: Vec<PathBuf>,
}

impl WatchSpec {
    /// Refuse a glob that cannot be read, naming it.
    pub fn check(&self) -> Result<(), ConfigError> {
        for pattern in self.ignore.iter().flatten() {
            check_ignore_glob(pattern)?;
        }
        for path in &self.paths {
            let text = path.to_string_lossy();
            if is_glob(&text) {
                glob(&text).map_err(|e| {
                    bad(format!(
                        "invalid watch pattern '{text}': {e}; use a path or a glob such as src/**/*.js"
                    ))
                })?;
            }
        }
        Ok(())
    }
}

/// Refuse an `ignore_watch` entry that is no glob herd can read.
pub fn check_ignore_glob(pattern: &str) -> Result<(), ConfigError> {
    if pattern.trim().is_empty() {
        return Err(bad(
            "invalid ignore_watch pattern '': it is empty; give a name (node_modules), a glob (*.log) or a path (logs/)",
        ));
    }
    glob(pattern).map(|_| ()).map_err(|e| {
        bad(format!(
            "invalid ignore_watch pattern '{pattern}': {e}; use a name (node_modules), a glob (*.log) or a path (logs/)"
        ))
    })
}

/// Does this path hold glob syntax (`*`, `?`, `[`, `{`)?
pub fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '[', '{'])
}

/// A glob as herd reads them: `*` and `?` stay within one name, `**` crosses
/// folders, `\` escapes (as chokidar's picomatch reads pm2's globs).
pub(crate) fn glob(pattern: &str) -> Result<globset::Glob, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| e.kind().to_string())
}

/// A checked cron pattern (pm2's `cron_restart`): 5 fields (minute hour
/// day-of-month month day-of-week) or 6 (seconds first), in pm2's dialect:
/// croner's, with day-of-month and day-of-week both required to match, as
/// pm2's croner does. Evaluated in the local time zone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CronSpec(String);

impl CronSpec {
    /// The pattern as written (trimmed).
    pub fn pattern(&self) -> &str {
        &self.0
    }

    /// The parsed schedule (checked when the spec was made).
    pub(crate) fn schedule(&self) -> croner::Cron {
        cron_parser()
            .parse(&self.0)
            .expect("a CronSpec holds a checked pattern")
    }
}

fn cron_parser() -> croner::parser::CronParser {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .dom_and_dow(true)
        .sloppy_ranges(true)
        .build()
}

impl FromStr for CronSpec {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<CronSpec, ConfigError> {
        let s = s.trim();
        let fields = s.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(bad(format!(
                "invalid cron pattern '{s}': it has {fields} field(s); use 5 (minute hour day month weekday, as \"0 3 * * *\") or 6 (seconds first, as \"*/30 * * * * *\")"
            )));
        }
        let cron = cron_parser()
            .parse(s)
            .map_err(|e| bad(format!("invalid cron pattern '{s}': {e}")))?;
        // A pattern no date matches (`0 0 31 2 *`) would never fire.
        if cron
            .find_next_occurrence(&chrono::Utc::now(), false)
            .is_err()
        {
            return Err(bad(format!(
                "cron pattern '{s}' matches no date in the coming years (day-of-month and weekday must both match); check its day and month fields"
            )));
        }
        // One space between fields, as shown back.
        Ok(CronSpec(s.split_whitespace().collect::<Vec<_>>().join(" ")))
    }
}

impl TryFrom<String> for CronSpec {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<CronSpec, ConfigError> {
        s.parse()
    }
}

impl From<CronSpec> for String {
    fn from(c: CronSpec) -> String {
        c.0
    }
}

impl fmt::Display for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_patterns_as_pm2_takes_them() {
        for good in [
            "0 3 * * *",
            "*/30 * * * * *",
            "* * * * * *",
            "0 0 * * MON",
            "0  12 1 * *",
            "0/10 * * * *",
        ] {
            good.parse::<CronSpec>()
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        assert_eq!(
            "0  12 1 * *".parse::<CronSpec>().unwrap().pattern(),
            "0 12 1 * *"
        );
        // (pattern, what the error says)
        for (bad, says) in [
            ("* *", "it has 2 field(s)"),
            ("@daily", "it has 1 field(s)"),
            ("0 0 0 * * * 2030", "it has 7 field(s)"),
            ("61 * * * *", "invalid cron pattern '61 * * * *'"),
            ("0 0 31 2 *", "matches no date"),
            ("", "it has 0 field(s)"),
        ] {
            let e = bad.parse::<CronSpec>().unwrap_err().0;
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_cron_spec_reads_back_only_when_valid() {
        let c: CronSpec = serde_json::from_str(r#""0 3 * * *""#).unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), r#""0 3 * * *""#);
        assert!(serde_json::from_str::<CronSpec>(r#""99 * * * *""#).is_err());
    }

    #[test]
    fn day_of_month_and_weekday_must_both_match_as_in_pm2() {
        use chrono::TimeZone;
        // The 13th that is a Friday: pm2's croner 4 needs both.
        let c: CronSpec = "0 0 13 * FRI".parse().unwrap();
        let from = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let next = c.schedule().find_next_occurrence(&from, false).unwrap();
        assert_eq!(
            next,
            chrono::Utc.with_ymd_and_hms(2026, 2, 13, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn ignore_globs_are_checked() {
        for good in [
            "node_modules",
            "*.log",
            "logs/**",
            "\\.git",
            "/tmp/x",
            "src/{a,b}",
        ] {
            check_ignore_glob(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["[a-", "src/{a,b", " "] {
            let e = check_ignore_glob(bad).unwrap_err().0;
            assert!(e.contains("invalid ignore_watch pattern"), "{bad}: {e}");
        }
        let spec = WatchSpec {
            paths: vec!["src/**/*.{ts".into()],
            ..WatchSpec::default()
        };
        assert!(spec
            .check()
            .unwrap_err()
            .0
            .contains("invalid watch pattern"));
    }
}
