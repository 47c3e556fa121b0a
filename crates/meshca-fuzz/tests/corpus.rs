//! Every committed corpus file (`fuzz/corpus/<target>/`) and every regression
//! (`fuzz/regressions/<target>/`, the inputs of crashes the fuzzer found) through its target, on
//! stable, so that a fixed crash stays fixed without a fuzzer. Also that the targets, their
//! cargo-fuzz files and their corpus folders name each other.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_and_regression_runs_clean() {
    let mut failed = Vec::new();
    let mut ran = 0;
    for (target, run) in meshca_fuzz::TARGETS {
        let corpus = files_in(&fuzz_dir().join("corpus").join(target));
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} is empty");
        let regressions = files_in(&fuzz_dir().join("regressions").join(target));
        for file in corpus.iter().chain(&regressions) {
            let data = std::fs::read(file).unwrap();
            ran += 1;
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {ran} inputs panicked: {failed:#?}",
        failed.len()
    );
}

#[test]
fn targets_fuzz_files_and_folders_agree() {
    let names: Vec<&str> = meshca_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    for name in &names {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("meshca_fuzz::{name}(")),
            "{} does not call meshca_fuzz::{name}",
            file.display()
        );
    }
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for folder in ["fuzz_targets", "corpus", "regressions"] {
        for path in files_in(&fuzz_dir().join(folder)) {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(
                names.contains(&stem.as_str()),
                "fuzz/{folder}/{stem} is no target"
            );
        }
    }
    for name in &names {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}
