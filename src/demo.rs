//! `herd demo`: a cluster of herd's built-in demo server, in one command.
//! The same subcommand plays both parts: started by a person it is the
//! primary (through herd-cluster's embedded primary, which re-executes this
//! binary); started by that primary it is a worker serving the demo routes.

use anyhow::Context;
use clap::Args;
use herd_cluster::{Balance, Primary, Worker};
use herd_engine::config::{self, Instances};
use tokio::task::JoinSet;

use crate::UsageError;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of workers: a number, or `max` for one per usable CPU.
    #[arg(short = 'i', long, default_value = "max", value_parser = parse_instances, value_name = "N|max")]
    instances: Instances,

    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "HOST:PORT")]
    listen: String,

    /// How connections are spread: shared, reuseport or round-robin.
    #[arg(long, default_value = "round-robin", value_parser = parse_balance, value_name = "MODE")]
    balance: Balance,
}

fn parse_instances(s: &str) -> Result<Instances, String> {
    s.parse().map_err(|e: config::ConfigError| e.0)
}

fn parse_balance(s: &str) -> Result<Balance, String> {
    s.parse().map_err(|e: config::ConfigError| e.0)
}

pub fn main(args: DemoArgs) -> anyhow::Result<i32> {
    if herd_cluster::is_worker() {
        return worker(&args.listen);
    }
    // One thread: the supervisor's work is small and sequential, and a
    // single-threaded runtime spares the round-robin path cross-thread
    // wake-ups. (It is also the thread that starts workers, which their
    // PR_SET_PDEATHSIG is tied to: it lives as long as herd.)
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let workers = args.instances.resolve();
    let url = format!("http://{}", args.listen);
    eprintln!(
        "herd demo: {workers} workers on {url} ({} balance). Try:\n\
         \x20 curl {url}/            # which worker answered, and its request count\n\
         \x20 curl {url}/stop        # that worker exits; watch herd replace it\n\
         \x20 curl {url}/check       # blocks one worker's CPU for 3 s; the others keep answering\n\
         \x20 curl -o flipped.png {url}/flip   # flips an image on the CPU\n\
         \x20 kill -HUP {pid}        # rolling reload;  Ctrl-C stops gracefully",
        args.balance,
        pid = std::process::id(),
    );
    runtime.block_on(async {
        Primary::new()
            .workers(workers)
            .listen("demo", &args.listen)
            .balance(args.balance)
            .run()
            .await
            .map_err(|e| match e {
                herd_cluster::primary_error::Error::Start(e) => UsageError(e.to_string()).into(),
                herd_cluster::primary_error::Error::Config(e) => UsageError(e).into(),
                e => anyhow::Error::new(e),
            })
    })
}

/// How long a demo worker waits for a new connection's request before it
/// takes the next connection anyway (a client that connects and says
/// nothing must not stop it accepting).
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// One demo worker: single-threaded, like a Node process, so `/check` and
/// `/flip` block it the way a CPU-bound handler blocks an event loop.
fn worker(addr: &str) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let worker = Worker::get();
        let mut listener = worker.listener("demo", addr)?;
        let demo = herd_demo::Demo::new(worker.id().map(|id| id.to_string()));
        worker.ready().ok();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut conns = JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { break };
                            // Take the next connection only once this one's
                            // request is here (at most REQUEST_WAIT): a worker
                            // that takes connections before their requests
                            // arrive answers herd at once, so it looks free
                            // while it is building a queue it will serve one
                            // request at a time (seed 003's /flip burst split
                            // 2/8 under round-robin that way).
                            let _ = tokio::time::timeout(REQUEST_WAIT, stream.readable()).await;
                            let demo = demo.clone();
                            conns.spawn(herd_demo::serve_connection_until(stream, demo, async {
                                Worker::get().shutdown().await
                            }));
                            // Serve what was accepted before accepting more: on a
                            // shared socket, a single-threaded worker that drains
                            // the whole accept queue first takes a burst its
                            // siblings should have shared.
                            tokio::task::yield_now().await;
                        }
                        _ = worker.shutdown() => break,
                    }
                }
                // Stop accepting; let in-flight requests finish.
                drop(listener);
                while conns.join_next().await.is_some() {}
            })
            .await;
        Ok(0)
    })
}
