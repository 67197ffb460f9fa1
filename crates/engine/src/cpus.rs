//! How many CPUs this process may really use.
//!
//! `-i max` means "one worker per usable CPU". On a container or a systemd slice that is not
//! the number of cores the machine has: the scheduler affinity mask (`taskset`, cpusets) and the
//! cgroup CPU bandwidth quota (`docker --cpus`, `CPUQuota=`) both cut it down. This module owns
//! that computation: the affinity mask from `sched_getaffinity`, limited by the tightest cgroup
//! quota on the path from this process's cgroup up to the hierarchy root (cgroup v2 `cpu.max`,
//! cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded up and never below 1.
//!
//! The file parsing is pure, and the cgroup lookup takes a filesystem root so tests can run it
//! against a fake tree.

use std::fs;
use std::path::{Path, PathBuf};

/// The CPUs this process may use: its affinity mask, limited by a cgroup quota; at least 1.
#[must_use]
pub fn usable_cpus() -> usize {
    combine(affinity_cpus(), cgroup_cpu_limit(Path::new("/")))
}

/// `affinity` limited by a fractional CPU quota rounded up; at least 1.
fn combine(affinity: usize, quota: Option<f64>) -> usize {
    let limit = match quota {
        // `as` saturates, so an absurdly large quota cannot wrap.
        Some(q) if q.is_finite() && q > 0.0 => q.ceil() as usize,
        _ => usize::MAX,
    };
    affinity.min(limit).max(1)
}

/// The number of CPUs in this process's affinity mask; falls back to the standard library's
/// estimate if the mask cannot be read.
fn affinity_cpus() -> usize {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;

    let fallback = || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => {
            let n = (0..CpuSet::count())
                .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
                .count();
            if n == 0 {
                fallback()
            } else {
                n
            }
        }
        // A mask wider than CpuSet (more than 1024 CPUs) fails with EINVAL.
        Err(_) => fallback(),
    }
}

/// The quota in a cgroup v2 `cpu.max` file (`"$MAX $PERIOD"`), in CPUs; `None` when unlimited
/// (`max`) or unreadable.
fn quota_from_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    // The period may be omitted when written, but the kernel always prints it.
    let period = fields.next().unwrap_or("100000");
    if quota == "max" || fields.next().is_some() {
        return None;
    }
    ratio(quota, period)
}

/// The quota from cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`, in CPUs; `None` when
/// unlimited (`-1`) or unreadable.
fn quota_from_cfs(quota: &str, period: &str) -> Option<f64> {
    ratio(quota.trim(), period.trim())
}

/// `quota / period` when both are positive integers.
fn ratio(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.parse().ok()?;
    let period: i64 = period.parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// Where this process sits, from `/proc/self/cgroup`.
#[derive(Debug, Default, PartialEq, Eq)]
struct CgroupPaths {
    /// The cgroup v2 path (the `0::/path` line).
    unified: Option<String>,
    /// The path in the cgroup v1 hierarchy that has the `cpu` controller.
    cpu_v1: Option<String>,
}

/// Parses `/proc/self/cgroup`: lines `hierarchy-id:controller,list:/path`.
fn parse_proc_self_cgroup(text: &str) -> CgroupPaths {
    let mut paths = CgroupPaths::default();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            paths.unified = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "cpu") {
            paths.cpu_v1 = Some(path.to_string());
        }
    }
    paths
}

/// A cgroup filesystem mount, from `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct CgroupMount {
    /// The cgroup path that is the root of this mount (`/` unless the mount is of a sub-tree).
    root: String,
    /// Where it is mounted.
    mount_point: String,
}

/// The cgroup v2 mount and the cgroup v1 mount carrying the `cpu` controller, from
/// `/proc/self/mountinfo`: `id parent dev root mount_point options [optional...] - fstype source
/// super_options`.
fn parse_mountinfo(text: &str) -> (Option<CgroupMount>, Option<CgroupMount>) {
    let (mut v2, mut v1) = (None, None);
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let (Some(root), Some(mount_point), Some(&fstype)) =
            (left.get(3), left.get(4), right.first())
        else {
            continue;
        };
        let mount = || CgroupMount {
            root: unescape_octal(root),
            mount_point: unescape_octal(mount_point),
        };
        match fstype {
            "cgroup2" if v2.is_none() => v2 = Some(mount()),
            "cgroup" if v1.is_none() => {
                let options = right.get(2).copied().unwrap_or("");
                if options.split(',').any(|o| o == "cpu") {
                    v1 = Some(mount());
                }
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// Undoes the kernel's `\ooo` escaping of spaces, tabs, newlines and backslashes in mountinfo.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        if let (b'\\', Some(d)) = (bytes[i], digits) {
            if d.iter().all(|b| (b'0'..=b'7').contains(b)) {
                out.push(d.iter().fold(0u8, |n, b| n.wrapping_mul(8) + (b - b'0')));
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The tightest CPU quota on this process's cgroups, in CPUs, reading `/proc/self/cgroup`,
/// `/proc/self/mountinfo` and the cgroup filesystems below `root` (`/` outside tests).
/// `None` when there is no limit or nothing could be read.
fn cgroup_cpu_limit(root: &Path) -> Option<f64> {
    let paths = parse_proc_self_cgroup(&read(&root.join("proc/self/cgroup"))?);
    let (v2_mount, v1_mount) =
        parse_mountinfo(&read(&root.join("proc/self/mountinfo")).unwrap_or_default());

    let v2 = paths.unified.as_deref().and_then(|path| {
        let dir = cgroup_dir(root, v2_mount.as_ref(), &["sys/fs/cgroup"], path)?;
        tightest(&dir.leaf, &dir.top, |d| {
            quota_from_cpu_max(&read(&d.join("cpu.max"))?)
        })
    });
    let v1 = paths.cpu_v1.as_deref().and_then(|path| {
        let conventional = ["sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/cpu"];
        let dir = cgroup_dir(root, v1_mount.as_ref(), &conventional, path)?;
        tightest(&dir.leaf, &dir.top, |d| {
            quota_from_cfs(
                &read(&d.join("cpu.cfs_quota_us"))?,
                &read(&d.join("cpu.cfs_period_us"))?,
            )
        })
    });
    // On a hybrid system both may be present; the tighter one applies.
    [v2, v1].into_iter().flatten().reduce(f64::min)
}

/// A cgroup's directory and the directory of the hierarchy's mount above it.
struct CgroupDir {
    leaf: PathBuf,
    top: PathBuf,
}

/// Finds the directory of cgroup `path`: under the mount from mountinfo if there is one, else
/// under the first conventional location (relative to `root`) that exists.
fn cgroup_dir(
    root: &Path,
    mount: Option<&CgroupMount>,
    conventional: &[&str],
    path: &str,
) -> Option<CgroupDir> {
    let (top, mount_root) = match mount {
        Some(m) => (
            root.join(m.mount_point.trim_start_matches('/')),
            m.root.as_str(),
        ),
        None => (
            conventional
                .iter()
                .map(|c| root.join(c))
                .find(|d| d.is_dir())?,
            "/",
        ),
    };
    // Without a cgroup namespace a container sees its own cgroup mounted as the root
    // (mount root `/docker/abc`) while /proc/self/cgroup still says `/docker/abc`.
    let relative = match path.strip_prefix(mount_root) {
        Some(rest) if mount_root == "/" || rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    };
    let relative = relative.trim_start_matches('/');
    // The path may not be visible (another namespace, shown as `/../..`); the mount still is.
    let leaf = top.join(relative);
    let leaf = if relative.split('/').all(|c| c != "..") && leaf.is_dir() {
        leaf
    } else {
        top.clone()
    };
    Some(CgroupDir { leaf, top })
}

/// The smallest quota that `quota_of` finds in `leaf` and its parents up to and including `top`.
fn tightest(leaf: &Path, top: &Path, quota_of: impl Fn(&Path) -> Option<f64>) -> Option<f64> {
    leaf.ancestors()
        .take_while(|dir| dir.starts_with(top))
        .filter_map(quota_of)
        .reduce(f64::min)
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fake filesystem root in the temp dir, removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "herd-cpus-{}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
                name
            );
            let dir = std::env::temp_dir().join(unique);
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            FakeRoot(dir)
        }

        /// Writes `text` at `rel` (relative to the fake root), creating parent directories.
        fn file(&self, rel: &str, text: &str) -> &Self {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
            self
        }

        fn dir(&self, rel: &str) -> &Self {
            fs::create_dir_all(self.0.join(rel)).unwrap();
            self
        }

        fn limit(&self) -> Option<f64> {
            cgroup_cpu_limit(&self.0)
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const V2_MOUNTINFO: &str =
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn cpu_max_unlimited() {
        assert_eq!(quota_from_cpu_max("max 100000\n"), None);
        assert_eq!(quota_from_cpu_max("max"), None);
    }

    #[test]
    fn cpu_max_quota() {
        assert_eq!(quota_from_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(quota_from_cpu_max("200000 100000"), Some(2.0));
        assert_eq!(quota_from_cpu_max("50000"), Some(0.5));
    }

    #[test]
    fn cpu_max_garbage() {
        for text in [
            "",
            "\n",
            "lots 100000",
            "100000 0",
            "-5 100000",
            "1 2 3",
            "1.5 1",
        ] {
            assert_eq!(quota_from_cpu_max(text), None, "{text:?}");
        }
    }

    #[test]
    fn cfs_quota() {
        assert_eq!(quota_from_cfs("-1\n", "100000\n"), None);
        assert_eq!(quota_from_cfs("250000\n", "100000\n"), Some(2.5));
        assert_eq!(quota_from_cfs("garbage", "100000"), None);
        assert_eq!(quota_from_cfs("100000", ""), None);
    }

    #[test]
    fn combine_rounds_up_and_takes_the_smaller() {
        assert_eq!(combine(8, None), 8);
        assert_eq!(combine(8, Some(1.5)), 2, "fractional quota rounds up");
        assert_eq!(combine(8, Some(3.0)), 3, "quota smaller than affinity wins");
        assert_eq!(combine(2, Some(6.0)), 2, "affinity smaller than quota wins");
        assert_eq!(combine(4, Some(0.1)), 1);
        assert_eq!(combine(0, None), 1, "at least 1");
        assert_eq!(combine(4, Some(f64::NAN)), 4);
        assert_eq!(combine(4, Some(1e300)), 4);
    }

    #[test]
    fn proc_self_cgroup_v2() {
        let paths = parse_proc_self_cgroup("0::/user.slice/app.scope\n");
        assert_eq!(paths.unified.as_deref(), Some("/user.slice/app.scope"));
        assert_eq!(paths.cpu_v1, None);
    }

    #[test]
    fn proc_self_cgroup_v1_and_hybrid() {
        let text = "12:cpuset:/\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n0::/\n";
        let paths = parse_proc_self_cgroup(text);
        assert_eq!(paths.cpu_v1.as_deref(), Some("/docker/abc"));
        assert_eq!(paths.unified.as_deref(), Some("/"));
        // `cpuacct` alone or `cpuset` is not `cpu`.
        let paths = parse_proc_self_cgroup("3:cpuset:/a\n2:cpuacct:/b\n");
        assert_eq!(paths, CgroupPaths::default());
        assert_eq!(
            parse_proc_self_cgroup("garbage\n::\n1:cpu:relative"),
            CgroupPaths::default()
        );
    }

    #[test]
    fn mountinfo() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
41 31 0:38 /docker/a\\040b /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
broken line
";
        let (v2, v1) = parse_mountinfo(text);
        let v2 = v2.unwrap();
        assert_eq!(v2.root, "/docker/a b");
        assert_eq!(v2.mount_point, "/sys/fs/cgroup/unified");
        assert_eq!(v1.unwrap().mount_point, "/sys/fs/cgroup/cpu");
        assert_eq!(parse_mountinfo(""), (None, None));
    }

    #[test]
    fn octal_unescape() {
        assert_eq!(unescape_octal(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_octal(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn v2_unlimited() {
        let root = FakeRoot::new("v2-unlimited");
        root.file("proc/self/cgroup", "0::/app\n")
            .file("proc/self/mountinfo", V2_MOUNTINFO)
            .file("sys/fs/cgroup/app/cpu.max", "max 100000\n");
        assert_eq!(root.limit(), None);
    }

    #[test]
    fn v2_fractional_quota() {
        let root = FakeRoot::new("v2-fraction");
        root.file("proc/self/cgroup", "0::/app\n")
            .file("proc/self/mountinfo", V2_MOUNTINFO)
            .file("sys/fs/cgroup/app/cpu.max", "150000 100000\n");
        assert_eq!(root.limit(), Some(1.5));
        assert_eq!(combine(16, root.limit()), 2);
    }

    #[test]
    fn v2_nested_parent_is_tighter() {
        let root = FakeRoot::new("v2-nested");
        root.file("proc/self/cgroup", "0::/outer/middle/inner\n")
            .file("proc/self/mountinfo", V2_MOUNTINFO)
            .file("sys/fs/cgroup/outer/cpu.max", "100000 100000\n")
            .file("sys/fs/cgroup/outer/middle/cpu.max", "max 100000\n")
            .file(
                "sys/fs/cgroup/outer/middle/inner/cpu.max",
                "400000 100000\n",
            );
        assert_eq!(root.limit(), Some(1.0));
    }

    #[test]
    fn v2_without_mountinfo_uses_conventional_path() {
        let root = FakeRoot::new("v2-conventional");
        root.file("proc/self/cgroup", "0::/svc\n")
            .file("sys/fs/cgroup/svc/cpu.max", "300000 100000\n");
        assert_eq!(root.limit(), Some(3.0));
    }

    #[test]
    fn v2_namespaced_path_not_visible_reads_the_mount() {
        // The container's cgroup is mounted as /sys/fs/cgroup but /proc/self/cgroup names a
        // path from the host's point of view.
        let root = FakeRoot::new("v2-hidden");
        root.file("proc/self/cgroup", "0::/kubepods/pod1/ctr\n")
            .file(
                "proc/self/mountinfo",
                "30 23 0:26 /kubepods/pod1/ctr /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n",
            )
            .file("sys/fs/cgroup/cpu.max", "200000 100000\n");
        assert_eq!(root.limit(), Some(2.0));
    }

    #[test]
    fn path_outside_the_namespace_reads_the_mount() {
        let root = FakeRoot::new("v2-dotdot");
        root.file("proc/self/cgroup", "0::/../../escape\n")
            .file("proc/self/mountinfo", V2_MOUNTINFO)
            .file("sys/fs/cgroup/cpu.max", "max 100000\n")
            .file("sys/escape/cpu.max", "100000 100000\n");
        assert_eq!(root.limit(), None);
    }

    #[test]
    fn garbage_files_are_ignored() {
        let root = FakeRoot::new("garbage");
        root.file("proc/self/cgroup", "0::/a/b\n")
            .file("proc/self/mountinfo", "not mountinfo at all\n")
            .file("sys/fs/cgroup/a/cpu.max", "\u{1}\u{2} nonsense\n")
            .file("sys/fs/cgroup/a/b/cpu.max", "");
        assert_eq!(root.limit(), None);

        let root = FakeRoot::new("garbage-cgroup");
        root.file("proc/self/cgroup", "nothing here\n")
            .file("sys/fs/cgroup/cpu.max", "100000 100000\n");
        assert_eq!(root.limit(), None);

        // Nothing at all: no /proc.
        let root = FakeRoot::new("empty");
        assert_eq!(root.limit(), None);
    }

    #[test]
    fn v1_unlimited() {
        let root = FakeRoot::new("v1-unlimited");
        root.file("proc/self/cgroup", "4:cpu,cpuacct:/\n")
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
        assert_eq!(root.limit(), None);
    }

    #[test]
    fn v1_quota_via_mountinfo_with_nested_parent() {
        let root = FakeRoot::new("v1-mountinfo");
        root.file("proc/self/cgroup", "1:cpu:/docker/abc\n0::/\n")
            .file(
                "proc/self/mountinfo",
                "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                 41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
            )
            .file("sys/fs/cgroup/cpu/docker/cpu.cfs_quota_us", "150000\n")
            .file("sys/fs/cgroup/cpu/docker/cpu.cfs_period_us", "100000\n")
            .file("sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us", "-1\n")
            .file("sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us", "100000\n")
            .dir("sys/fs/cgroup/unified");
        assert_eq!(root.limit(), Some(1.5));
    }

    #[test]
    fn v1_mount_root_is_stripped() {
        // Docker without a cgroup namespace: the container's own cgroup is the mount's root.
        let root = FakeRoot::new("v1-mount-root");
        root.file("proc/self/cgroup", "4:cpu,cpuacct:/docker/abc\n")
            .file(
                "proc/self/mountinfo",
                "40 30 0:40 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n",
            )
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "50000\n")
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
            // A same-named sub-directory must not be mistaken for this cgroup.
            .file("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "900000\n")
            .file("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
        assert_eq!(root.limit(), Some(0.5));
    }

    #[test]
    fn hybrid_takes_the_tighter() {
        let root = FakeRoot::new("hybrid");
        root.file("proc/self/cgroup", "4:cpu:/a\n0::/a\n")
            .file("sys/fs/cgroup/a/cpu.max", "300000 100000\n")
            .file("sys/fs/cgroup/cpu/a/cpu.cfs_quota_us", "200000\n")
            .file("sys/fs/cgroup/cpu/a/cpu.cfs_period_us", "100000\n");
        assert_eq!(root.limit(), Some(2.0));
    }

    #[test]
    fn the_real_machine_gives_at_least_one() {
        let n = usable_cpus();
        assert!(n >= 1);
        assert!(n <= affinity_cpus());
    }
}
