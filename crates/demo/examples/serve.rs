//! One demo worker on its own, without herd:
//! `cargo run --release -p herd-demo --example serve -- 127.0.0.1:3000 [worker-id]`.
//! Ctrl-C shuts it down gracefully.

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let worker_id = args.next();
    // A worker is single-threaded on purpose: see the crate docs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!(
            "demo worker pid {} on http://{}",
            std::process::id(),
            listener.local_addr()?
        );
        let demo = herd_demo::Demo::new(worker_id);
        herd_demo::serve(listener, demo, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })
}
