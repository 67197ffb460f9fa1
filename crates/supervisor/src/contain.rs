//! Nothing outlives its app: what holds an app's processes together, so that
//! a new supervisor can end whatever an old one left behind (an old
//! supervisor killed with SIGKILL takes its workers with it — their
//! `PR_SET_PDEATHSIG` — but not their children, such as `sleep 777 &`).
//!
//! Two ways, recorded in `apps/<id>.groups` ([`Record`]):
//! - **A cgroup** (v2) of the app's own, where herd may create one (root, or
//!   a delegated subtree): the supervisor moves itself into
//!   `<its cgroup>/herd-app-<id>-<pid>` before it starts any worker, so
//!   every process of the app is in it, however it detaches (a new session,
//!   a double fork). A later supervisor writes `1` to its `cgroup.kill`,
//!   waits until it is empty and removes it.
//! - **Process groups** otherwise: every worker leads its own group; the
//!   supervisor records each group (its leader's pid and start time) when
//!   the worker starts and drops it when it ends. A later supervisor
//!   SIGKILLs each recorded group that still has members — unless the
//!   leader's pid now names another process (its start time differs), which
//!   means the old group is empty and the number was reused. A child that
//!   made a group or session of its own escapes this way.
//!
//! The record also lists the groups when a cgroup is used, as a second line
//! of defence should the cgroup be gone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::files::AppFiles;

/// How long ending an old app's processes may take before herd goes on
/// (SIGKILL is immediate; this covers the kernel tearing them down).
const END_DEADLINE: Duration = Duration::from_secs(5);

/// `apps/<id>.groups`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The format of this file.
    pub format: u32,
    /// The app's cgroup (a directory under the cgroup2 mount), if it has one.
    pub cgroup: Option<PathBuf>,
    /// The process groups of the app's workers.
    pub groups: Vec<Group>,
}

/// One worker's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group's id: its leader's (the worker's) pid.
    pub pgid: u32,
    /// The leader's start time (clock ticks after boot, `/proc/PID/stat`),
    /// which tells it apart from a later process given the same pid.
    pub start_time: u64,
}

impl Record {
    pub const FORMAT: u32 = 1;

    /// The app's record; none (an empty record) if there is no file.
    pub fn read(files: &AppFiles) -> io::Result<Record> {
        match files.read_groups()? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is not a group record: {e}",
                        files.groups_file().display()
                    ),
                )
            }),
            None => Ok(Record::default()),
        }
    }

    pub fn write(&self, files: &AppFiles) -> io::Result<()> {
        let mut record = self.clone();
        record.format = Record::FORMAT;
        let bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
        files.write_groups(&bytes)
    }

    /// Add the group of the worker `pid` (which leads it). A worker already
    /// gone is not recorded: its group was ended with it.
    pub fn add(&mut self, pid: u32) {
        if let Some(start_time) = start_time(pid) {
            self.groups.retain(|g| g.pgid != pid);
            self.groups.push(Group {
                pgid: pid,
                start_time,
            });
        }
    }

    pub fn remove(&mut self, pid: u32) {
        self.groups.retain(|g| g.pgid != pid);
    }
}

/// What [`end_leftovers`] found and ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ended {
    /// Processes SIGKILLed.
    pub processes: usize,
    /// Processes still there at the deadline (should be none).
    pub left: usize,
}

/// End every process an earlier supervisor of this app left, by its record:
/// the whole cgroup, then every recorded group with members.
pub fn end_leftovers(record: &Record) -> Ended {
    let mut ended = Ended::default();
    if let Some(dir) = &record.cgroup {
        if dir.exists() {
            let (processes, left) = kill_cgroup(dir);
            ended.processes += processes;
            ended.left += left;
            let _ = fs::remove_dir(dir);
        }
    }
    for group in &record.groups {
        let (processes, left) = kill_group(*group);
        ended.processes += processes;
        ended.left += left;
    }
    ended
}

/// SIGKILL the group if it still holds processes of the recorded one.
fn kill_group(group: Group) -> (usize, usize) {
    // A leader with the recorded pid but another start time: the number was
    // given to a new process, so the old group is empty (a pid that is still
    // some group's id is never handed out again).
    if let Some(now) = start_time(group.pgid) {
        if now != group.start_time {
            return (0, 0);
        }
    }
    let members = processes_in_group(group.pgid).len();
    if members == 0 {
        return (0, 0);
    }
    let _ = nix::sys::signal::killpg(Pid::from_raw(group.pgid as i32), Signal::SIGKILL);
    let deadline = Instant::now() + END_DEADLINE;
    loop {
        let left = processes_in_group(group.pgid).len();
        if left == 0 || Instant::now() >= deadline {
            return (members, left);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `cgroup.kill` the cgroup and wait until it is empty.
fn kill_cgroup(dir: &Path) -> (usize, usize) {
    let members = cgroup_processes(dir).len();
    if members == 0 {
        return (0, 0);
    }
    if let Err(e) = fs::write(dir.join("cgroup.kill"), "1") {
        crate::say!("cannot kill the processes of {}: {e}", dir.display());
    }
    let deadline = Instant::now() + END_DEADLINE;
    loop {
        let left = cgroup_processes(dir).len();
        if left == 0 || Instant::now() >= deadline {
            return (members, left);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The live (not zombie) processes of a cgroup.
pub fn cgroup_processes(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.state != 'Z'))
        .collect()
}

/// The live (not zombie) processes whose process group is `pgid`.
pub fn processes_in_group(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.pgrp == pgid && s.state != 'Z'))
        .collect()
}

/// The fields of `/proc/PID/stat` herd needs.
struct Stat {
    state: char,
    pgrp: u32,
    start_time: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields we want follow its last ')'. Numbering from field 3 (state).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// When `pid` started (clock ticks after boot); `None` if it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// Which way a supervisor contains its app (`herd supervise --contain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainMode {
    /// A cgroup where herd may create one, else process groups.
    Auto,
    /// A cgroup, or refuse to start.
    Cgroup,
    /// Process groups only.
    ProcessGroups,
}

/// Why the app cannot have a cgroup of its own.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted")]
    NoCgroup2,
    #[error("this process is in no cgroup2 group (/proc/self/cgroup has no 0:: line)")]
    NoOwnGroup,
    #[error("the kernel has no cgroup.kill (Linux 5.14 or later has)")]
    NoKill,
    #[error("cannot create {path}: {error}")]
    Create { path: PathBuf, error: io::Error },
    #[error("cannot move this process into {path}: {error}")]
    Enter { path: PathBuf, error: io::Error },
}

/// The app's cgroup, which this process has entered.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// Create `<our cgroup>/herd-app-<id>-<pid>` and move this process (all
    /// its threads) into it. Call before any worker starts.
    pub fn create(id: u32) -> Result<Cgroup, CgroupError> {
        let mount = cgroup2_mount().ok_or(CgroupError::NoCgroup2)?;
        let own = own_cgroup().ok_or(CgroupError::NoOwnGroup)?;
        let parent = mount.join(own.trim_start_matches('/'));
        let dir = parent.join(format!("herd-app-{id}-{}", std::process::id()));
        fs::create_dir(&dir).map_err(|error| CgroupError::Create {
            path: dir.clone(),
            error,
        })?;
        let cgroup = Cgroup { dir };
        if !cgroup.dir.join("cgroup.kill").exists() {
            cgroup.remove();
            return Err(CgroupError::NoKill);
        }
        if let Err(error) = fs::write(cgroup.dir.join("cgroup.procs"), "0") {
            let path = cgroup.dir.clone();
            cgroup.remove();
            return Err(CgroupError::Enter { path, error });
        }
        Ok(cgroup)
    }

    /// The cgroup this process is in already (it created it before an
    /// in-place upgrade).
    pub fn entered(dir: PathBuf) -> Cgroup {
        Cgroup { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The app is done: move this process back out, end whatever is left
    /// in the cgroup (a worker's child that detached) and remove it.
    pub fn close(self) {
        if let Some(parent) = self.dir.parent() {
            let _ = fs::write(parent.join("cgroup.procs"), "0");
        }
        kill_cgroup(&self.dir);
        self.remove();
    }

    fn remove(&self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Where the cgroup2 file system is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid system).
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // `36 35 0:30 / /sys/fs/cgroup/unified rw,... shared:9 - cgroup2 cgroup2 rw`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape_mount_path(
            left.split_whitespace().nth(4)?,
        )))
    })
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as `\ooo`.
fn unescape_mount_path(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// This process's cgroup2 path (`/` or `/user.slice/...`).
fn own_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/odd\x"), r"/odd\x");
    }

    #[test]
    fn a_recorded_group_is_ended_with_its_children_and_a_reused_pid_is_spared() {
        use std::os::unix::process::CommandExt;
        // A worker in its own group that started a child of its own.
        let mut worker = std::process::Command::new("sh")
            .args(["-c", "sleep 777 & exec sleep 778"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = worker.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes_in_group(pgid).len() < 2 {
            assert!(Instant::now() < deadline, "the child never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut record = Record::default();
        record.add(pgid);
        // A record whose leader pid now names another process: untouched.
        let mut stale = record.clone();
        stale.groups[0].start_time += 1;
        assert_eq!(end_leftovers(&stale), Ended::default());
        assert_eq!(processes_in_group(pgid).len(), 2);
        let ended = end_leftovers(&record);
        let _ = worker.wait();
        assert_eq!(
            ended,
            Ended {
                processes: 2,
                left: 0
            }
        );
        assert!(processes_in_group(pgid).is_empty());
    }
}
