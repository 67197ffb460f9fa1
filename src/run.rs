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
    after_help = "Signals: SIGINT/SIGTERM stop gracefully (twice: at once), SIGHUP reloads worker by worker, SIGTTIN/SIGTTOU add/remove a worker, SIGUSR2 replaces herd's own binary in place (same pid, same workers: after installing a new herd at the same path).\n\nExample: herd run -i 2 --listen 127.0.0.1:8000 -- ./server"
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
    host(None, Some(spec))
}

/// The app a previous image of herd handed over (`herd run` got SIGUSR2):
/// resume it in the foreground. Called before the command line is read.
pub fn resume(
    inherited: Result<herd_engine::upgrade::Inherited, herd_engine::upgrade::ResumeError>,
) -> anyhow::Result<i32> {
    let inherited = inherited.context("cannot resume the app after an upgrade")?;
    if inherited.kind != herd_engine::foreground::HOST_KIND {
        anyhow::bail!(
            "cannot resume the app after an upgrade: it was handed over by a `{}` host, which this binary does not run",
            inherited.kind
        );
    }
    host(Some(inherited), None)
}

/// Run the app (started from `spec`, or resumed) in the foreground.
fn host(
    inherited: Option<herd_engine::upgrade::Inherited>,
    spec: Option<herd_engine::config::AppSpec>,
) -> anyhow::Result<i32> {
    // The main thread runs the app, starts every worker and execs a new
    // binary on SIGUSR2 (so the workers, whose PR_SET_PDEATHSIG is tied to
    // it, survive both).
    herd_engine::upgrade::main_thread_host(move || {
        // One thread: the supervisor's work is small and sequential, and a
        // single-threaded runtime spares the round-robin path cross-thread
        // wake-ups.
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_keep_alive(herd_engine::memory::BLOCKING_KEEP_ALIVE)
            .build()
            .context("cannot start the async runtime")
            .and_then(|runtime| {
                runtime
                    .block_on(async move {
                        match (inherited, spec) {
                            (Some(inherited), _) => {
                                herd_engine::foreground::resume(inherited).await
                            }
                            (None, Some(spec)) => herd_engine::foreground::run(spec).await,
                            (None, None) => unreachable!("a spec or an app to resume"),
                        }
                    })
                    .map_err(|e| match e {
                        herd_engine::foreground::Error::Start(e) => {
                            UsageError(e.to_string()).into()
                        }
                        e => anyhow::Error::new(e),
                    })
            });
        crate::exit_code(result)
    })
}
