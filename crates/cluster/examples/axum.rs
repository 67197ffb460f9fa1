//! An axum server as a herd cluster: one binary that is both the primary and
//! its workers, like a Node `cluster` script.
//!
//! ```sh
//! cargo run -p herd-cluster --features axum --example axum
//! curl http://127.0.0.1:3000/
//! ```
//! Under `herd run` the same binary is just a worker:
//! `herd run -i 2 --listen web=127.0.0.1:3000 -- target/debug/examples/axum`.

use axum::{routing::get, Router};
use herd_cluster::{Balance, Primary, Worker};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    // Started by hand: be the primary, unless already a worker of `herd run`.
    if herd_cluster::is_primary() && std::env::var_os("AXUM_STANDALONE").is_none() {
        let code = Primary::new()
            .workers(2)
            .listen("web", &addr)
            .balance(Balance::RoundRobin)
            .run()
            .await
            .unwrap_or_else(|e| {
                eprintln!("axum example: {e}");
                2
            });
        std::process::exit(code);
    }

    let worker = Worker::get();
    let listener = worker.listener("web", &addr).expect("a listener");
    let id = worker.id();
    let app =
        Router::new().route(
            "/",
            get(move || async move {
                format!("hello from worker {id:?}, pid {}\n", std::process::id())
            }),
        );
    worker.ready().ok();
    axum::serve(listener, app)
        .with_graceful_shutdown(async { Worker::get().shutdown().await })
        .await
        .expect("serve");
}
