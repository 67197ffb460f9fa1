//! Test-only fault points: places where a test makes the process die as a
//! crash (kill -9, power loss) would, to show that what it leaves behind is
//! still whole. Compiled in only with the `fault-points` feature, which the
//! test suite builds with (`--all-features`) and a release never has;
//! without it, [`point`] is empty.
//!
//! `HERD_FAULT=POINT[,POINT...]` in the environment of the process arms
//! them; each point names itself (`before-rename:dump.json`).

/// Die here, by SIGKILL, if `HERD_FAULT` names this point.
#[cfg(feature = "fault-points")]
pub(crate) fn point(name: &str) {
    let armed = std::env::var("HERD_FAULT").is_ok_and(|v| v.split(',').any(|p| p == name));
    if armed {
        eprintln!("herd: fault point {name}: killing this process (HERD_FAULT)");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}
