//! How a herd process uses the C allocator. Every app has a supervisor
//! process of its own, so what one process keeps but does not use is paid
//! once per app: glibc's malloc gives each thread that allocates an arena
//! of its own (a supervisor had two threads; the second arena alone held
//! about 200 kB; a helper thread may still start), and keeps freed pages
//! inside its heap until asked to return them. Elsewhere (musl, other libcs) both calls do nothing.
//!
//! Code is the other cost a process pays alone when the binary is shared
//! by few: every page of the program a process has touched stays mapped
//! (with the kernel's fault-around, 64 KiB at a time), start-up's argument
//! and config parsing included, and counts in its PSS. [`Trimmer`] gives
//! both back a moment after each burst of work and once a minute.
//!
//! The stack is the third: it keeps every page the deepest poll touched.
//! [`on_heap`] keeps a rare or bulky step's frame out of the long-lived
//! loops that await it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::{Duration, Instant};

/// One malloc arena for the whole process. Call first thing in `main`,
/// before any thread exists. herd's threads allocate little and rarely at
/// the same moment, so they never wait on each other for long.
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of glibc's allocator; it is
    // called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Give the pages malloc holds free back to the system (after start-up,
/// whose parsing and set-up leave freed memory in the heap).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own lock; no memory that is
    // in use is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A future built and kept on the heap, and polled through a pointer.
///
/// The poll function of an `async` block reserves its whole stack frame at
/// every poll, whichever branch runs, with the frames of the callees'
/// polls that the compiler inlined into it; a process's stack keeps every
/// page its deepest poll touched, and a supervisor lives as long as its
/// app. A long-lived loop awaits its rare or bulky steps (a command, a
/// status, the start-up) through this: the step is built in this
/// function's frame, gone before the first poll (`Box::pin(step())` in
/// the loop would build it in the loop's frame first), and its poll is
/// called through the box's vtable, never inlined into the loop's.
#[inline(never)]
pub fn on_heap<'a, F>(
    make: impl FnOnce() -> F,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = F::Output> + Send + 'a>>
where
    F: std::future::Future + Send + 'a,
{
    Box::pin(make())
}

/// How long an idle blocking-pool thread of a long-lived herd process's
/// runtime waits for more work before it ends (tokio's default: 10 s).
/// Shorter than [`Trim::QUIET`], so that its end, which runs code of its
/// own (the thread's destructors, its join), comes before the trim that
/// follows the work: ending after it, it mapped ~1 MB of the binary's code
/// into the daemon again, until the next [`Trim::PERIOD`].
pub const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// A task that gives memory back on [`Trim`]'s schedule, beside the
/// process's own loops (which only [`Trimmer::poke`] it when work comes in:
/// nothing is added to their iterations). Spawn it on the main thread's
/// runtime (a `current_thread` one), so that the stack it trims is that
/// thread's. Ends with the runtime, or when dropped.
#[derive(Debug)]
pub struct Trimmer {
    work: std::sync::Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Trimmer {
    /// Start it: the first trim comes [`Trim::QUIET`] from now.
    pub fn spawn() -> Trimmer {
        let work = std::sync::Arc::new(tokio::sync::Notify::new());
        let notified = work.clone();
        let task = tokio::spawn(async move {
            let mut trim = Trim::new();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(trim.due().into()) => trim.run(),
                    _ = notified.notified() => trim.poke(),
                }
            }
        });
        Trimmer { work, task }
    }

    /// Work came in (a request, a command): trim within [`Trim::QUIET`].
    pub fn poke(&self) {
        self.work.notify_one();
    }
}

impl Drop for Trimmer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// When a long-lived herd process (the daemon, an app's supervisor) gives
/// memory back: [`Trim::QUIET`] after start-up or after the last of a burst
/// of work ([`Trim::poke`]), and at least every [`Trim::PERIOD`], for what
/// ran meanwhile (a restart, a reload by watch or cron) and so that steady
/// work cannot put it off for ever. Plain data, run by [`Trimmer`].
///
/// A trim waits for the *last* poke: one due a moment after the first poke
/// of a burst (the daemon's `start` ×100, each a request) ran in the middle
/// of it, and what ran after it stayed mapped until the next period.
#[derive(Debug, Clone, Copy)]
pub struct Trim {
    due: Instant,
    /// The latest a trim may come: a period after the last one.
    latest: Instant,
}

impl Trim {
    /// How long after work came in.
    pub const QUIET: Duration = Duration::from_secs(2);
    /// How often at least.
    pub const PERIOD: Duration = Duration::from_secs(60);

    /// Due [`Trim::QUIET`] from now (a process that has just started).
    pub fn new() -> Trim {
        let now = Instant::now();
        Trim {
            due: now + Trim::QUIET,
            latest: now + Trim::PERIOD,
        }
    }

    /// When [`Trim::run`] is due.
    pub fn due(&self) -> Instant {
        self.due
    }

    /// Work came in: be due [`Trim::QUIET`] after it, unless a period has
    /// passed by then since the last trim.
    pub fn poke(&mut self) {
        self.poked_at(Instant::now());
    }

    fn poked_at(&mut self, now: Instant) {
        self.due = (now + Trim::QUIET).min(self.latest);
    }

    /// Give back the heap's free pages, the code's mapped pages and the
    /// main thread's stack pages below the caller's frame; due
    /// again in [`Trim::PERIOD`]. Costs a system call or two here, and a
    /// few dozen minor faults as the code that runs next is mapped again.
    pub fn run(&mut self) {
        release_free_memory();
        release_code_pages();
        release_unused_stack();
        self.ran_at(Instant::now());
    }

    fn ran_at(&mut self, now: Instant) {
        self.latest = now + Trim::PERIOD;
        self.due = self.latest;
    }
}

impl Default for Trim {
    fn default() -> Trim {
        Trim::new()
    }
}

/// Let go of the pages of this program's code and read-only data that
/// are mapped now (after start-up: argument and config parsing, set-up)
/// so that only what runs from here on is mapped again, by the next page
/// fault of each. Those pages are the binary file's, in the page cache,
/// never written (`MADV_DONTNEED` on them only drops this process's page
/// table entries: nothing is lost, the next use maps the same page again
/// from the cache, a minor fault). Writable segments (data, the
/// relocated read-only-after-relocation part) are left alone.
pub fn release_code_pages() {
    #[cfg(target_os = "linux")]
    for (start, len) in read_only_segments() {
        // SAFETY: the range is page-aligned and lies inside this program's
        // own read-only, file-backed mappings, which are never written: the
        // kernel maps the same file pages again on the next access.
        unsafe {
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED);
        }
    }
}

/// Let go of the main thread's stack pages well below the caller's frame:
/// start-up's deep calls (parsing, set-up) touched them once and they stay
/// resident for the process's life otherwise. Below the stack pointer
/// nothing is live (the ABI's red zone is 128 bytes; a margin of
/// [`STACK_MARGIN`] is kept), and a page given back reads as zeros the
/// next time a call goes that deep, which writes before it reads. Called
/// on another thread's stack, it does nothing.
pub fn release_unused_stack() {
    #[cfg(target_os = "linux")]
    {
        let marker = 0u8;
        let here = std::hint::black_box(&marker) as *const u8 as usize;
        let Some((low, high)) = main_stack() else {
            return;
        };
        if !(low..high).contains(&here) {
            return;
        }
        let end = here.saturating_sub(STACK_MARGIN) & !(4096 - 1);
        if end > low {
            // SAFETY: [low, end) is the main thread's own stack mapping,
            // more than STACK_MARGIN below the current frame: no live data
            // is there, and the kernel gives zeroed pages on the next touch.
            unsafe {
                libc::madvise(low as *mut libc::c_void, end - low, libc::MADV_DONTNEED);
            }
        }
    }
}

/// How far below the caller's frame [`release_unused_stack`] leaves the
/// stack alone.
pub const STACK_MARGIN: usize = 4 * 1024;

/// The main thread's stack mapping (`[stack]` in `/proc/self/maps`).
#[cfg(target_os = "linux")]
fn main_stack() -> Option<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[stack]"))?;
    let (low, high) = line.split_whitespace().next()?.split_once('-')?;
    Some((
        usize::from_str_radix(low, 16).ok()?,
        usize::from_str_radix(high, 16).ok()?,
    ))
}

/// The main program's loaded segments that are not writable, as
/// page-aligned (start, length), without any page a writable segment
/// shares.
#[cfg(target_os = "linux")]
fn read_only_segments() -> Vec<(usize, usize)> {
    struct Found {
        read_only: Vec<(usize, usize)>,
        writable: Vec<(usize, usize)>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info for the call's duration;
        // `data` is the `Found` passed below.
        let (info, found) = unsafe { (&*info, &mut *(data as *mut Found)) };
        // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
        let headers =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        for h in headers.iter().filter(|h| h.p_type == libc::PT_LOAD) {
            let start = info.dlpi_addr as usize + h.p_vaddr as usize;
            let range = (start, start + h.p_memsz as usize);
            if h.p_flags & libc::PF_W != 0 {
                found.writable.push(range);
            } else {
                found.read_only.push(range);
            }
        }
        1 // the main program comes first: stop after it
    }
    let mut found = Found {
        read_only: Vec::new(),
        writable: Vec::new(),
    };
    // SAFETY: `each` only reads the headers and writes to `found`.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut found as *mut Found as *mut libc::c_void) };
    // SAFETY: sysconf only reads a system constant.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => return Vec::new(),
    };
    found
        .read_only
        .iter()
        .filter_map(|&(start, end)| {
            let mut lo = start.div_ceil(page) * page;
            let mut hi = end / page * page;
            for &(ws, we) in &found.writable {
                let (ws, we) = (ws / page * page, we.div_ceil(page) * page);
                if ws < hi && lo < we {
                    if ws <= lo {
                        lo = we
                    } else {
                        hi = ws
                    }
                }
            }
            (lo < hi).then(|| (lo, hi - lo))
        })
        .collect()
}

/// The glibc tunable a supervisor runs with (see the module docs).
pub const LEAN_TUNABLES: &str = "glibc.malloc.tcache_count=0";
/// The environment variable glibc reads its tunables from.
pub const GLIBC_TUNABLES: &str = "GLIBC_TUNABLES";
/// Set beside it to what herd added (a `HERD_` name: never passed on to a
/// worker).
const ADDED: &str = "HERD_ADDED_TUNABLES";

/// The variables to start a supervisor process with (on top of this
/// process's environment): [`LEAN_TUNABLES`] after whatever tunables this
/// process has, and what was added.
pub fn lean_start_env() -> [(&'static str, OsString); 2] {
    let mut value = std::env::var_os(GLIBC_TUNABLES).unwrap_or_default();
    if !value.is_empty() {
        value.push(":");
    }
    value.push(LEAN_TUNABLES);
    [(GLIBC_TUNABLES, value), (ADDED, LEAN_TUNABLES.into())]
}

/// `GLIBC_TUNABLES` as this process's workers inherit it: its value here
/// without what herd added for itself (the last such item), or `None` if
/// nothing else is left. Unchanged when herd added nothing.
pub fn tunables_for_workers(value: &OsStr) -> Option<OsString> {
    without_added(value, std::env::var_os(ADDED).as_deref())
}

fn without_added(value: &OsStr, added: Option<&OsStr>) -> Option<OsString> {
    let Some(added) = added.filter(|a| !a.is_empty()) else {
        return Some(value.to_owned());
    };
    let items: Vec<&[u8]> = value.as_bytes().split(|&b| b == b':').collect();
    let ours = items.iter().rposition(|item| *item == added.as_bytes());
    let kept: Vec<&[u8]> = items
        .into_iter()
        .enumerate()
        .filter(|(i, item)| Some(*i) != ours && !item.is_empty())
        .map(|(_, item)| item)
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some(OsString::from_vec(kept.join(&b':')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kB of this program's code resident in this process.
    fn own_code_kb() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_code = false;
        let mut kb = 0;
        for line in smaps.lines() {
            if let Some(rss) = line.strip_prefix("Rss:") {
                if in_code {
                    kb += rss.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
                }
            } else if line.contains('-') && line.split_whitespace().count() >= 5 {
                let f: Vec<&str> = line.split_whitespace().collect();
                in_code =
                    f[1] == "r-xp" && f.get(5).map(std::path::Path::new) == Some(exe.as_path());
            }
        }
        kb
    }

    #[test]
    fn code_pages_given_back_are_mapped_again_as_the_code_runs() {
        // Other tests run code in parallel and map pages again at once: the
        // drop must show in one of a few tries.
        let tries: Vec<(u64, u64)> = (0..5)
            .map(|_| {
                let before = own_code_kb();
                release_code_pages();
                (before, own_code_kb())
            })
            .collect();
        assert!(
            tries.iter().any(|(before, after)| after < before),
            "kB of code resident (before, after): {tries:?}"
        );
        // The process runs on: the same code, mapped again from the file.
        let words: Vec<String> = (0..2000).rev().map(|i| format!("{i:05}")).collect();
        let mut sorted = words.clone();
        sorted.sort();
        assert_eq!(sorted.first().map(String::as_str), Some("00000"));
        assert!(own_code_kb() > 0);
    }

    #[test]
    fn read_only_segments_leave_every_writable_page_alone() {
        let segments = read_only_segments();
        assert!(segments.len() >= 2, "read-only data and code: {segments:?}");
        // This static is written (its page is in a writable segment): no
        // segment given back may hold it.
        static WRITTEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        WRITTEN.store(7, std::sync::atomic::Ordering::SeqCst);
        let at = &WRITTEN as *const _ as usize;
        for &(start, len) in &segments {
            assert!(
                !(start..start + len).contains(&at),
                "{segments:?} holds {at:#x}"
            );
        }
        release_code_pages();
        assert_eq!(WRITTEN.load(std::sync::atomic::Ordering::SeqCst), 7);
    }

    #[test]
    fn a_trim_comes_a_quiet_moment_after_the_last_work_and_at_least_once_a_period() {
        let start = Instant::now();
        let mut trim = Trim {
            due: start + Trim::QUIET,
            latest: start + Trim::PERIOD,
        };
        let at = |s: u64| start + Duration::from_secs(s);
        // A burst of work: due a quiet moment after its last request, not
        // after its first.
        trim.poked_at(at(1));
        trim.poked_at(at(2));
        assert_eq!(trim.due(), at(2) + Trim::QUIET);
        trim.ran_at(at(4));
        assert_eq!(trim.due(), at(4) + Trim::PERIOD);
        // Steady work, a request a second: still at least once a period.
        for s in 5..200 {
            trim.poked_at(at(s));
            assert!(trim.due() <= at(4) + Trim::PERIOD, "put off at {s} s");
            if trim.due() <= at(s) {
                trim.ran_at(at(s));
                assert_eq!(s, 64, "a period after the last trim");
                break;
            }
        }
        // Quiet again: a period until the next one, unless work comes.
        assert_eq!(trim.due(), at(64) + Trim::PERIOD);
        trim.poked_at(at(70));
        assert_eq!(trim.due(), at(70) + Trim::QUIET);
    }

    fn strip(value: &str, added: Option<&str>) -> Option<String> {
        without_added(OsStr::new(value), added.map(OsStr::new)).map(|v| v.into_string().unwrap())
    }

    #[test]
    fn what_herd_added_to_the_tunables_is_not_passed_on_to_workers() {
        let ours = Some(LEAN_TUNABLES);
        assert_eq!(strip(LEAN_TUNABLES, ours), None);
        assert_eq!(
            strip("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0", ours).as_deref(),
            Some("glibc.malloc.arena_max=2")
        );
        // The operator's own identical item stays: only herd's (the last) goes.
        assert_eq!(
            strip(
                "glibc.malloc.tcache_count=0:glibc.malloc.tcache_count=0",
                ours
            )
            .as_deref(),
            Some(LEAN_TUNABLES)
        );
        // Added nothing: nothing taken.
        assert_eq!(strip(LEAN_TUNABLES, None).as_deref(), Some(LEAN_TUNABLES));
        assert_eq!(
            strip("glibc.malloc.arena_max=2", ours).as_deref(),
            Some("glibc.malloc.arena_max=2")
        );
    }
}
