//! How a process ended: plain data shared by the machine (which decides what
//! follows an exit) and the OS layer (which learns it from `waitid`).

use nix::sys::signal::Signal;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code. Also used, as `128 + n`, for a death by a
    /// signal `n` that [`Signal`] cannot represent (a real-time signal).
    Code(i32),
    Signal(Signal),
}

impl ExitStatus {
    /// Was the process ended from outside — by the OOM killer, an operator
    /// or a script (`SIGKILL`, `SIGTERM`, `SIGINT`, `SIGHUP`) — rather than
    /// by its own doing (an exit code, or a fault such as `SIGSEGV` or
    /// `SIGABRT`)? A kill says nothing about whether the program can start,
    /// so herd's restart counting does not take it for a crash.
    pub fn is_kill(self) -> bool {
        matches!(
            self,
            ExitStatus::Signal(Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP)
        )
    }
}

/// As JSON: `{"code": 1}` or `{"signal": "SIGKILL"}`.
impl serde::Serialize for ExitStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            ExitStatus::Code(c) => map.serialize_entry("code", c)?,
            ExitStatus::Signal(sig) => map.serialize_entry("signal", sig.as_str())?,
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for ExitStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Repr {
            Code(i32),
            Signal(String),
        }
        match Repr::deserialize(d)? {
            Repr::Code(c) => Ok(ExitStatus::Code(c)),
            Repr::Signal(name) => name
                .parse::<Signal>()
                .map(ExitStatus::Signal)
                .map_err(|_| serde::de::Error::custom(format!("unknown signal '{name}'"))),
        }
    }
}
