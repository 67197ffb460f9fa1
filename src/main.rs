//! The `herd` command: a thin layer over `herd-engine`. Each subcommand lives
//! in its own module; this file only parses the command line and turns errors
//! into exit statuses (2 for bad input, as clap does; 1 for failures at run time).

mod demo;
mod manage;
mod run;
mod supervise;

// The parsers live in the library half (src/lib.rs), for the fuzz targets.
use herd_cli::{appfile, options, UsageError};

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "Run N workers of any server on one port; restart them, reload them without losing a request.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Supervise one app in the foreground (like `node cluster.js` or pm2-runtime).
    Run(Box<run::RunArgs>),
    /// A cluster of herd's built-in demo web server on localhost: see workers share a port,
    /// get replaced when they die, and run CPU-bound requests in parallel.
    Demo(demo::DemoArgs),
    #[command(flatten)]
    Manage(manage::Verb),
    /// One app's supervisor process (started by the daemon).
    #[command(hide = true)]
    Supervise(supervise::SuperviseArgs),
    /// Print a shell completion script: `herd completion bash > /etc/bash_completion.d/herd`,
    /// `herd completion zsh > "${fpath[1]}/_herd"`, `herd completion fish > ~/.config/fish/completions/herd.fish`.
    Completion(CompletionArgs),
}

#[derive(clap::Args)]
struct CompletionArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

fn main() {
    // Before any thread: one malloc arena (each app has a supervisor process
    // of its own, so a second arena would be paid once per app).
    herd_engine::memory::one_arena();
    // A herd binary being upgraded to answers which state versions it reads.
    herd_engine::upgrade::answer_probe();
    resume_if_inherited();
    // `herd update` asks a new binary which protocols it speaks.
    answer_versions();
    long_running_alone();
    cli_main()
}

/// The image after an in-place upgrade: resume the app it was handed
/// (whatever this version makes of the command line), and exit. Returns
/// when this process is not such an image.
#[inline(never)]
fn resume_if_inherited() {
    if let Some(inherited) = herd_engine::upgrade::inherited() {
        let result = match inherited {
            Ok(i) if i.kind == herd_supervisor::process::HOST_KIND => supervise::resume(i),
            other => run::resume(other),
        };
        std::process::exit(exit_code(result));
    }
}

/// Every other command: the whole command line. A function of its own, so
/// that its stack frame (the parsed command line and every verb's locals,
/// about 5 kB) is not under the long-running processes' stacks for their
/// whole life: `main` stays small.
#[inline(never)]
fn cli_main() -> ! {
    let cli = Cli::parse();
    // As a container's PID 1, `run` and `daemon` put a tiny init in front of
    // themselves (reaps orphans, forwards signals): see herd_engine::init_if_pid1.
    // Here, before any thread exists. (The daemon's, in long_running_alone,
    // starts the daemon again if it dies on its own: the apps run on under
    // their supervisors, and the new daemon adopts them.)
    if let Cmd::Run(_) = cli.command {
        herd_engine::init_if_pid1_then(herd_engine::OnHerdDeath::Exit);
    }
    let result = match cli.command {
        Cmd::Run(args) => run::main(*args),
        Cmd::Demo(args) => demo::main(args),
        Cmd::Manage(verb) => manage::main(verb),
        Cmd::Supervise(args) => supervise::main(args),
        Cmd::Completion(args) => {
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "herd",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
    };
    std::process::exit(exit_code(result))
}

/// `herd supervise` (once per app) and `herd daemon` run for as long as
/// herd does: parse their own arguments alone. Building the whole command
/// line would leave its memory (about 150 kB of heap, and its code's pages)
/// to every one of those processes. Returns for every other command.
fn long_running_alone() {
    let args = || std::env::args_os().skip(1);
    let code = match std::env::args_os()
        .nth(1)
        .as_deref()
        .and_then(|a| a.to_str())
    {
        Some("supervise") => exit_code(supervise::main(SuperviseOnly::parse_from(args()).args)),
        Some("daemon") => {
            let daemon = DaemonOnly::parse_from(args());
            // As a container's PID 1 (see main): here, before any thread exists.
            herd_engine::init_if_pid1_then(herd_engine::OnHerdDeath::Restart);
            exit_code(manage::main(manage::Verb::Daemon(daemon.args)))
        }
        _ => return,
    };
    std::process::exit(code)
}

#[derive(Parser)]
#[command(
    name = "herd supervise",
    bin_name = "herd supervise",
    version,
    hide = true
)]
struct SuperviseOnly {
    #[command(flatten)]
    args: supervise::SuperviseArgs,
}

/// Run the herd daemon in the foreground (for systemd and containers; the
/// other verbs start it in the background when it is not running).
#[derive(Parser)]
#[command(name = "herd daemon", bin_name = "herd daemon", version)]
struct DaemonOnly {
    #[command(flatten)]
    args: manage::DaemonArgs,
}

/// Answer `herd --herd-versions` (hidden; `herd update` asks a new binary
/// before executing it) and exit.
fn answer_versions() {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(VERSIONS_FLAG)) {
        // `lock-handover 1`: as a daemon's next image, it takes the held
        // herd.pid lock it is handed (HERD_DAEMON_LOCK_FD).
        println!(
            "herd versions: control {} supervisor {} state {} lock-handover 1",
            herd_protocol::VERSION,
            herd_protocol::supervisor::VERSION,
            herd_engine::upgrade::STATE_VERSION
        );
        std::process::exit(0);
    }
}

/// The hidden flag of [`answer_versions`].
pub const VERSIONS_FLAG: &str = "--herd-versions";

/// The exit status for a command's result; an error is printed.
pub(crate) fn exit_code(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("herd: error: {err:#}");
            let usage = err.downcast_ref::<UsageError>().is_some();
            if usage {
                2
            } else {
                1
            }
        }
    }
}
