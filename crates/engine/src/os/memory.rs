//! How a herd process uses the C allocator. Every app has a supervisor
//! process of its own, so what one process keeps but does not use is paid
//! once per app: glibc's malloc gives each thread that allocates an arena
//! of its own (a supervisor had two threads; the second arena alone held
//! about 200 kB; a helper thread may still start), and keeps freed pages
//! inside its heap until asked to return them. Elsewhere (musl, other libcs) both calls do nothing.

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
