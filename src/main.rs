//! The `herd` command: a thin layer over `herd-engine`. Each subcommand lives
//! in its own module; this file only parses the command line and turns errors
//! into exit statuses (2 for bad input, as clap does; 1 for failures at run time).

mod appfile;
mod demo;
mod manage;
mod options;
mod run;
mod supervise;

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

/// An error the user caused: printed, then herd exits with status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() {
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
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("herd: error: {err:#}");
            let usage = err.downcast_ref::<UsageError>().is_some();
            std::process::exit(if usage { 2 } else { 1 });
        }
    }
}
