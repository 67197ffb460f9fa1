//! `herd run`: supervise one app in the foreground. Parses and validates the
//! options (every mistake is reported before anything starts), starts the
//! engine, maps signals to commands (INT/TERM stop, HUP reload, TTIN/TTOU
//! scale), and prints the workers' output and the lifecycle events.

use anyhow::Context;
use clap::Args;

use crate::options::AppOptions;
use crate::UsageError;

#[derive(Args, Debug)]
#[command(
    after_help = "Signals: SIGINT/SIGTERM stop gracefully (twice: at once), SIGHUP reloads worker by worker, SIGTTIN/SIGTTOU add/remove a worker.\n\nExample: herd run -i 2 --listen 127.0.0.1:8000 -- ./server"
)]
pub struct RunArgs {
    #[command(flatten)]
    app: AppOptions,

    /// The program to run, then its arguments (after `--` if they start with a dash).
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn main(args: RunArgs) -> anyhow::Result<i32> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let spec = args.app.to_spec(&args.command, &cwd)?;
    // One thread: the supervisor's work is small and sequential, and a
    // single-threaded runtime spares the round-robin path cross-thread
    // wake-ups. (It is also the thread that starts workers, which their
    // PR_SET_PDEATHSIG is tied to: it lives as long as herd.)
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(herd_engine::foreground::run(spec))
        .map_err(|e| match e {
            herd_engine::foreground::Error::Start(e) => UsageError(e.to_string()).into(),
            e => anyhow::Error::new(e),
        })
}
