//! Replays the fuzzing seeds (`fuzz/corpus/<target>/`) and every input that once
//! crashed a fuzz target (`fuzz/regressions/<target>/`) through the same
//! `portcullis_testkit::fuzzing` entry points the targets in `fuzz/fuzz_targets/` call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// A fuzz target's entry point.
type Entry = fn(&[u8]);

/// The fuzz targets and their entry points.
const TARGETS: &[(&str, Entry)] = &[
    ("spiffe_id", portcullis_testkit::fuzzing::spiffe_id),
    ("svid_san", portcullis_testkit::fuzzing::svid_san),
    (
        "input_document",
        portcullis_testkit::fuzzing::input_document,
    ),
    ("config", portcullis_testkit::fuzzing::config),
    ("jwt", portcullis_testkit::fuzzing::jwt),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind);
    let mut count = 0;
    for (target, run) in TARGETS {
        for file in files(&root.join(target)) {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", file.display());
            count += 1;
        }
    }
    // Directories that name no target are a typo, not inputs to skip silently.
    for dir in files_and_dirs(&root) {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "{} is not a fuzz target",
            dir.display()
        );
    }
    count
}

fn files_and_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn corpus_seeds_pass() {
    let n = replay("corpus");
    // Every target has seeds.
    for (target, _) in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        assert!(!files(&dir).is_empty(), "no seeds for {target}");
    }
    assert!(n >= TARGETS.len());
}

#[test]
fn crash_regressions_pass() {
    replay("regressions");
}
