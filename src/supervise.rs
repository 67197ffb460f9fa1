//! `herd supervise` (hidden): one app's supervisor process, started by the
//! daemon (or by hand) for an app whose file the daemon wrote in
//! `$HERD_HOME/apps/<id>.json`. See `herd_supervisor::process`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use herd_supervisor::contain::ContainMode;
use herd_supervisor::files::FilesError;
use herd_supervisor::process::{self, Error};

use crate::UsageError;

#[derive(Args, Debug)]
pub struct SuperviseArgs {
    /// The herd home holding `apps/<id>.json` (the daemon's `$HERD_HOME`).
    #[arg(long, value_name = "DIR")]
    home: PathBuf,
    /// The app's id.
    #[arg(long)]
    id: u32,
    /// Stay in the foreground, lines on stderr (else detach once serving).
    #[arg(long)]
    foreground: bool,
    /// How the app's processes are held together, so a later supervisor
    /// ends whatever this one leaves: a cgroup of the app's own where one
    /// can be created (auto), always one (cgroup), or the workers' process
    /// groups.
    #[arg(long, value_enum, default_value = "auto")]
    contain: Contain,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Contain {
    Auto,
    Cgroup,
    ProcessGroups,
}

pub fn main(args: SuperviseArgs) -> anyhow::Result<i32> {
    let options = process::Options {
        home: args.home,
        id: args.id,
        foreground: args.foreground,
        contain: match args.contain {
            Contain::Auto => ContainMode::Auto,
            Contain::Cgroup => ContainMode::Cgroup,
            Contain::ProcessGroups => ContainMode::ProcessGroups,
        },
    };
    process::run(options).map_err(|e| match e {
        // Asked for the wrong app, or for one that already has a supervisor.
        Error::Files(e @ (FilesError::ReadApp { .. } | FilesError::Running { .. })) => {
            UsageError(e.to_string()).into()
        }
        e => anyhow::Error::new(e),
    })
}

/// The supervisor's next image after an in-place upgrade: take the app over.
pub fn resume(inherited: herd_engine::upgrade::Inherited) -> anyhow::Result<i32> {
    Ok(process::resume(inherited)?)
}
