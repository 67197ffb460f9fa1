//! What each of herd's fuzz targets asserts of one input. The cargo-fuzz
//! targets (`fuzz_targets/*.rs`) call these; so does the regression test
//! that runs every saved input in CI (`tests/it/fuzz_regressions.rs` includes
//! this file), so a crash once found stays fixed.
//!
//! Every check runs herd's own parsing code on the input and asserts more
//! than "no panic": errors say something, what is parsed reads back the
//! same, and what splits a stream into lines gives the same lines however
//! the reads cut it. The first byte of an input chooses among variants
//! (format, limits, how reads are cut); the rest is the data.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One fuzz target: what it asserts of one input.
pub type Target = fn(&[u8]);

/// The targets, by name: what the regression test and `run.sh` iterate.
pub const TARGETS: &[(&str, Target)] = &[
    ("appfile", appfile),
    ("config_values", config_values),
    ("control_frames", control_frames),
    ("ipc_lines", ipc_lines),
    ("cluster_message", cluster_message),
    ("output_lines", output_lines),
    ("log_writer", log_writer),
    ("http_checks", http_checks),
];

/// The first byte (the variant), and the rest.
fn split(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (first, rest),
        None => (0, &[]),
    }
}

/// `data` cut into reads of 1..=`MAX` bytes, at places `seed` picks.
fn reads(data: &[u8], seed: u8) -> Vec<&[u8]> {
    const MAX: u32 = 61;
    let mut state = u32::from(seed) | 0x9e37_0000;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (state >> 16) % MAX) as usize;
        let (read, after) = rest.split_at(n.min(rest.len()));
        out.push(read);
        rest = after;
    }
    out
}

/// The parts of `rest` between NUL bytes, as text (at most `n`).
fn fields(rest: &[u8], n: usize) -> Vec<String> {
    rest.splitn(n, |&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// A listen address the parser would resolve by name (DNS): the fuzz
/// targets leave those out (run.sh also runs them without a network).
fn resolves_a_name(s: &str) -> bool {
    let addr = s.split_once('=').map_or(s, |(_, a)| a);
    if addr.starts_with("unix:")
        || addr.parse::<u16>().is_ok()
        || addr.parse::<std::net::SocketAddr>().is_ok()
    {
        return false;
    }
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A config file's text, in the format the first byte picks: read as `herd
/// start FILE` reads it, each app turned into what the daemon keeps, and
/// that read back as the daemon reads it.
pub fn appfile(data: &[u8]) {
    let (variant, rest) = split(data);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if text.lines().any(resolves_a_name) {
        return;
    }
    let name = ["herd.toml", "apps.json", "apps.yaml", "ecosystem.config.js"][variant as usize % 4];
    let profile = (variant & 4 != 0).then_some("production");
    let cwd = std::env::temp_dir();
    match herd_cli::appfile::load_text(text, Path::new(name), profile, &cwd) {
        Err(e) => assert!(
            e.0.starts_with(name) && e.0.len() > name.len() + 2,
            "an error names the file and what is wrong: {e}"
        ),
        Ok((apps, warnings)) => {
            assert!(!apps.is_empty(), "a file without apps is an error");
            for w in &warnings {
                assert!(w.starts_with(name), "a warning names the file: {w}");
            }
            for app in apps {
                let built = herd_cli::options::app_def_noting(
                    &app.options,
                    &app.daemon,
                    &app.command,
                    &app.base,
                );
                let Ok((def, _)) = built else {
                    continue;
                };
                let json = serde_json::to_value(&def).expect("an app definition serializes");
                let back: herd_protocol::AppDef =
                    serde_json::from_value(json.clone()).expect("the daemon reads it back");
                assert_eq!(serde_json::to_value(&back).unwrap(), json, "round trip");
            }
        }
    }
}

/// The value parsers the command line and the files share (durations,
/// sizes, signals, instances, listen addresses, names, secret patterns, the
/// listener's allowed hosts).
pub fn config_values(data: &[u8]) {
    use herd_engine::config::{self, Balance, ExecMode, Instances, ListenSpec, RestartMode};
    let (_, rest) = split(data);
    let s = String::from_utf8_lossy(rest);
    let s = s.as_ref();
    let said = |r: Result<(), String>| {
        if let Err(e) = r {
            assert!(!e.is_empty() && e.len() < 4 * s.len() + 400, "{e}");
        }
    };
    said(config::parse_duration(s).map(drop).map_err(|e| e.0));
    said(config::parse_size(s).map(drop).map_err(|e| e.0));
    said(config::parse_signal(s).map(drop).map_err(|e| e.0));
    said(s.parse::<Instances>().map(drop).map_err(|e| e.0));
    said(s.parse::<Balance>().map(drop).map_err(|e| e.0));
    said(s.parse::<RestartMode>().map(drop).map_err(|e| e.0));
    said(s.parse::<ExecMode>().map(drop).map_err(|e| e.0));
    said(config::check_app_name(s).map_err(|e| e.0));
    if !resolves_a_name(s) {
        if let Ok(spec) = s.parse::<ListenSpec>() {
            let json = serde_json::to_value(&spec).unwrap();
            let back: ListenSpec = serde_json::from_value(json).expect("a listen spec reads back");
            assert_eq!(back, spec);
        }
    }
    // pm2's rule, and what it is for: the stem itself may be `.` or `..`
    // (names pm2 takes too), but the files named after it stay in the folder.
    let stem = config::log_file_stem(s);
    assert_eq!(
        stem.chars().count(),
        s.chars().count(),
        "one character each"
    );
    assert!(
        stem.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
        "only [A-Za-z0-9.-] in a log file name: {stem:?}"
    );
    for suffix in ["-out.log", "-error.log", "-err.log"] {
        let file = std::path::PathBuf::from(format!("{stem}{suffix}"));
        assert_eq!(
            file.components().count(),
            1,
            "a log file name stays in its folder: {file:?}"
        );
        assert!(matches!(
            file.components().next(),
            Some(std::path::Component::Normal(_))
        ));
    }
    said(herd_protocol::SecretNames::parse(s).map(drop));
    if let Ok(host) = s.parse::<herd_daemon::http::AllowedHost>() {
        let again: herd_daemon::http::AllowedHost = host
            .to_string()
            .parse()
            .expect("an allowed host prints as itself");
        assert_eq!(again, host);
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Bytes a client writes on the control socket, read by the protocol's own
/// framing as the daemon reads them (first byte: the hello's frame limit;
/// requests or responses); every message read serializes back and reads
/// again the same.
pub fn control_frames(data: &[u8]) {
    use herd_protocol::{Connection, FrameError, Request, Response};
    use tokio::io::AsyncWriteExt;
    let (variant, rest) = split(data);
    runtime().block_on(async {
        let (mut client, daemon) = tokio::net::UnixStream::pair().expect("a socket pair");
        let mut conn = Connection::new(daemon);
        if variant & 1 != 0 {
            conn.limit_frames(4096);
        }
        let write = async move {
            let _ = client.write_all(rest).await;
            drop(client);
        };
        let read = async {
            loop {
                let step = if variant & 2 == 0 {
                    conn.recv::<Request>().await.map(|r| {
                        let json = serde_json::to_value(&r).expect("a request serializes");
                        let back: Request =
                            serde_json::from_value(json.clone()).expect("a request reads back");
                        assert_eq!(serde_json::to_value(&back).unwrap(), json);
                    })
                } else {
                    conn.recv::<Response>().await.map(|r| {
                        let json = serde_json::to_value(&r).expect("a response serializes");
                        let back: Response =
                            serde_json::from_value(json.clone()).expect("a response reads back");
                        assert_eq!(serde_json::to_value(&back).unwrap(), json);
                    })
                };
                match step {
                    Ok(()) => {}
                    Err(FrameError::Closed) => break,
                    Err(e) => {
                        assert!(!e.to_string().is_empty());
                        break;
                    }
                }
            }
        };
        tokio::join!(write, read);
    });
}

/// A worker's channel bytes, split into messages by the engine: the same
/// messages whether they arrive in one read or in many.
pub fn ipc_lines(data: &[u8]) {
    let (variant, rest) = split(data);
    let max = [16, 100, 4096, 1 << 20][variant as usize % 4];
    let whole = herd_engine::fuzzing::ipc_messages([rest], max);
    let cut = herd_engine::fuzzing::ipc_messages(reads(rest, variant >> 2), max);
    assert_eq!(
        whole, cut,
        "how the reads cut the bytes changed the messages"
    );
    let lines = rest.split(|&b| b == b'\n').count();
    assert!(whole.len() <= lines, "more messages than lines");
}

/// One message of Node's cluster protocol (or any JSON), read as herd
/// reads it, every answer herd could send built from it.
pub fn cluster_message(data: &[u8]) {
    let _ = herd_engine::fuzzing::cluster_message(data);
}

/// A worker's output, cut into lines by the output pump: the same bytes
/// however the reads cut them, no line over the limit, nothing lost.
pub fn output_lines(data: &[u8]) {
    let (variant, rest) = split(data);
    let max = [1, 7, 64, 4096][variant as usize % 4];
    let batches = herd_engine::fuzzing::output_lines([rest], max);
    let cut = herd_engine::fuzzing::output_lines(reads(rest, variant >> 2), max);
    for b in batches.iter().chain(&cut) {
        assert!(b.ends_with(b"\n"), "a batch holds whole lines");
    }
    let (whole, cut) = (batches.concat(), cut.concat());
    assert_eq!(whole, cut, "how the reads cut the bytes changed the lines");
    for line in whole.split_inclusive(|&b| b == b'\n') {
        assert!(line.len() <= max + 1, "a line over the limit");
    }
    let text = |b: &[u8]| {
        b.iter()
            .copied()
            .filter(|&c| c != b'\n')
            .collect::<Vec<u8>>()
    };
    assert_eq!(text(&whole), text(rest), "output lost or changed");
    assert_eq!(whole.is_empty(), rest.is_empty());
}

/// The daemon's log writer: a moment.js date format and lines, stamped
/// (one stamp per line, the line after it unchanged), then written to a
/// file that rotates by size (every line whole, in one file, in order).
pub fn log_writer(data: &[u8]) {
    use herd_supervisor::logs::{LogFile, Stamper};
    let (variant, rest) = split(data);
    let parts = fields(rest, 2);
    let format = parts.first().cloned().unwrap_or_default();
    let mut lines = parts.get(1).cloned().unwrap_or_default().into_bytes();
    if lines.len() > 2048 {
        lines.truncate(2048);
    }
    if !lines.is_empty() && !lines.ends_with(b"\n") {
        lines.push(b'\n');
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
    let stamped = Stamper::new(Some(&format)).stamp(&lines, at);
    let ins: Vec<&[u8]> = lines.split_inclusive(|&b| b == b'\n').collect();
    let outs: Vec<&[u8]> = stamped.split_inclusive(|&b| b == b'\n').collect();
    if !format.contains('\n') {
        assert_eq!(ins.len(), outs.len(), "one stamp per line");
        for (i, o) in ins.iter().zip(&outs) {
            assert!(o.ends_with(i), "the line follows its stamp unchanged");
        }
    }

    let (home, dir) = log_home();
    let max_size = [0u64, 8, 64, 1000][variant as usize % 4];
    let path = dir.join("fuzz.log");
    for n in 0..=ins.len() as u32 + 1 {
        let p = if n == 0 {
            path.clone()
        } else {
            PathBuf::from(format!("{}.{n}", path.display()))
        };
        let _ = std::fs::remove_file(p);
    }
    let mut log = LogFile::open(&path, home, max_size, 10_000).expect("open the log file");
    for batch in reads(&lines, variant >> 2).chunk_by(|a, _| !a.ends_with(b"\n")) {
        // Whole lines only, as the engine hands them over.
        let whole: Vec<u8> = batch.concat();
        log.write(&whole).expect("write the log file");
    }
    drop(log);
    let mut files = Vec::new();
    for n in (1..=ins.len() as u32 + 1).rev() {
        if let Ok(b) = std::fs::read(format!("{}.{n}", path.display())) {
            files.push(b);
        }
    }
    files.push(std::fs::read(&path).unwrap_or_default());
    assert_eq!(files.concat(), lines, "the files hold every line, in order");
    for f in &files {
        assert!(
            f.is_empty() || f.ends_with(b"\n"),
            "a line split over two files"
        );
        let one_line = f.iter().filter(|&&b| b == b'\n').count() <= 1;
        assert!(
            max_size == 0 || f.len() as u64 <= max_size || one_line,
            "a file over its size with more than one line"
        );
    }
}

/// A home for [`log_writer`] (in /dev/shm when there is one), and a folder
/// outside it for the files.
fn log_home() -> (&'static herd_daemon::Home, &'static Path) {
    static HOME: OnceLock<(herd_daemon::Home, PathBuf)> = OnceLock::new();
    let (home, dir) = HOME.get_or_init(|| {
        let tmp = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let base = tmp.join(format!("herd-fuzz-{}", std::process::id()));
        let dir = base.join("files");
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        let home = herd_daemon::Home::open(base.join("home")).expect("a home");
        (home, dir)
    });
    (home, dir)
}

/// What the HTTP listener parses itself: `--metrics-host` names, the
/// `Host` and `Origin` checks, a request target's path and query.
pub fn http_checks(data: &[u8]) {
    use herd_daemon::http::fuzzing::{check_host, check_origin, path_and_app, AllowedHost};
    let (variant, rest) = split(data);
    let parts = fields(rest, 4);
    let get = |i: usize| parts.get(i).map(String::as_str).unwrap_or_default();
    let (host, origin, allowed, target) = (get(0), get(1), get(2), get(3));
    let allowed: Vec<AllowedHost> = allowed
        .split(',')
        .filter_map(|a| a.parse::<AllowedHost>().ok())
        .collect();
    let local = match variant % 3 {
        0 => "127.0.0.1:9209",
        1 => "[::1]:9209",
        _ => "10.1.2.3:80",
    }
    .parse()
    .unwrap();
    let host = (variant & 4 == 0).then_some(host);
    let http10 = variant & 8 != 0;
    match check_host(host, http10, local, &allowed) {
        Err(e) => assert!(e.contains("Host"), "{e}"),
        Ok(()) if allowed.is_empty() => {
            if let Some(h) = host {
                assert!(h.ends_with(&local.port().to_string()), "{h} is not {local}");
            }
        }
        Ok(()) => {}
    }
    let origin = (variant & 16 == 0).then_some(origin);
    if check_origin(origin, host).is_ok() {
        if let Some(o) = origin {
            let h = host.expect("an Origin passes only with a Host");
            assert!(o.to_ascii_lowercase().ends_with(&h.to_ascii_lowercase()));
        }
    }
    let _ = path_and_app(target);
}
