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
    // A herd binary being upgraded to answers which state versions it reads.
    herd_engine::upgrade::answer_probe();
    // The image after an in-place upgrade: resume the app it was handed
    // (whatever this version makes of the command line).
    if let Some(inherited) = herd_engine::upgrade::inherited() {
        let result = match inherited {
            Ok(i) if i.kind == herd_supervisor::process::HOST_KIND => supervise::resume(i),
            other => run::resume(other),
        };
        std::process::exit(exit_code(result));
    }
    // `herd update` asks a new binary which protocols it speaks.
    answer_versions();
    let cli = Cli::parse();
    // As a container's PID 1, `run` and `daemon` put a tiny init in front of
    // themselves (reaps orphans, forwards signals): see herd_engine::init_if_pid1.
    // Here, before any thread exists.
    // The daemon is started again if it dies on its own (the apps run on
    // under their supervisors, and the new daemon adopts them).
    match cli.command {
        Cmd::Run(_) => herd_engine::init_if_pid1_then(herd_engine::OnHerdDeath::Exit),
        Cmd::Manage(manage::Verb::Daemon(_)) => {
            herd_engine::init_if_pid1_then(herd_engine::OnHerdDeath::Restart)
        }
        _ => {}
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

/// Answer `herd --herd-versions` (hidden; `herd update` asks a new binary
/// before executing it) and exit.
fn answer_versions() {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(VERSIONS_FLAG)) {
        println!(
            "herd versions: control {} supervisor {} state {}",
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
