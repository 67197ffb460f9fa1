//! Measures what one `/flip` costs on this machine: `cargo run --release -p herd-demo --example flip_cost`.

use std::time::Instant;

fn main() {
    let t = Instant::now();
    let demo = herd_demo::Demo::new(None);
    println!("image prepared in {:?}", t.elapsed());

    let runs = 10;
    let mut best = f64::MAX;
    let mut total = 0.0;
    let mut size = 0;
    for _ in 0..runs {
        let t = Instant::now();
        size = demo.flip_png().len();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        best = best.min(ms);
        total += ms;
    }
    println!(
        "flip + PNG encode: mean {:.1} ms, best {best:.1} ms over {runs} runs ({size} bytes of PNG)",
        total / runs as f64
    );

    let t = Instant::now();
    let raw = demo.flip_only();
    println!(
        "flip only: {:.2} ms ({raw} bytes)",
        t.elapsed().as_secs_f64() * 1e3
    );
}
