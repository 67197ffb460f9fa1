//! How many CPUs this process may really use.

/// The CPUs this process may use: its affinity mask, limited by a cgroup quota; at least 1.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
