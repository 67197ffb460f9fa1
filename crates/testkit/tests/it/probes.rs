//! The kernel probes the tests wait on instead of sleeping, checked against
//! situations made here: a listener's accept queue, a process's CPU time.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use herd_testkit::{cpu_time, tcp_port_state, CpuWatch};

#[test]
fn tcp_port_state_sees_the_accept_queue_drain() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    assert_eq!(tcp_port_state(port).accept_queue, Some(0));
    let _a = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _b = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let st = tcp_port_state(port);
    assert_eq!((st.accept_queue, st.established), (Some(2), 2), "{st:?}");
    let (_accepted, _) = l.accept().unwrap();
    let st = tcp_port_state(port);
    assert_eq!((st.accept_queue, st.established), (Some(1), 2), "{st:?}");
    drop(l);
    assert_eq!(tcp_port_state(port).accept_queue, None);
}

#[test]
fn cpu_watch_sees_a_spinning_process() {
    let me = std::process::id() as i32;
    let before = cpu_time(me).expect("our own CPU time");
    let watch = CpuWatch::new([me]);
    let spinner = std::thread::spawn(|| {
        let end = Instant::now() + Duration::from_millis(400);
        let mut x = 0u64;
        while Instant::now() < end {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    });
    assert_eq!(
        watch.wait_busy(Duration::from_millis(50), Duration::from_secs(10)),
        me
    );
    spinner.join().unwrap();
    assert!(cpu_time(me).unwrap() >= before + Duration::from_millis(50));
}
