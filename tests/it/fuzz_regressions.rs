//! Every input the fuzz targets keep — their seeds (`fuzz/seeds/TARGET/`)
//! and each crash they found (`fuzz/regressions/TARGET/`, named after the
//! bug) — run through the target's own check (`fuzz/src/lib.rs`, included
//! here), so a fixed crash stays fixed without cargo-fuzz or nightly.

use crate::fuzz_checks as checks;

use std::path::Path;

/// Run `target`'s check on every saved input; each failure names its file.
fn saved_inputs_pass(target: &str) {
    let (_, check) = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        if let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) {
            files.extend(dir.map(|e| e.unwrap().path()));
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no saved inputs for {target}");
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: these inputs fail: {failed:#?}"
    );
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                saved_inputs_pass(stringify!($name));
            }
        )*

        #[test]
        fn every_fuzz_target_has_a_test_here() {
            let here = [$(stringify!($name)),*];
            for (name, _) in checks::TARGETS {
                assert!(here.contains(name), "add {name} to targets! in this file");
            }
        }
    };
}

targets!(
    appfile,
    config_values,
    control_frames,
    ipc_lines,
    cluster_message,
    output_lines,
    log_writer,
    http_checks,
);
