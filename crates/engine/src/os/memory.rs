//! How a herd process uses the C allocator. Every app has a supervisor
//! process of its own, so what one process keeps but does not use is paid
//! once per app: glibc's malloc gives each thread that allocates an arena
//! of its own (a supervisor had two threads; the second arena alone held
//! about 200 kB; a helper thread may still start), and keeps freed pages
//! inside its heap until asked to return them. Elsewhere (musl, other libcs) both calls do nothing.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

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
