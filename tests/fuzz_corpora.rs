//! Replays every saved fuzz input (`fuzz/corpus/{target}/`) through the same
//! entry points the fuzz targets run (`cairn::fuzzing`), so the inputs that
//! once found a bug, and the seeds that reach deep, are checked by every
//! ordinary `cargo test` without a nightly toolchain.

use std::path::Path;

#[test]
fn every_corpus_input_replays_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, run) in cairn::fuzzing::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{target} has no corpus in {}", dir.display());
        for path in inputs {
            let data = std::fs::read(&path).unwrap();
            // A panic names the input, to re-run with `cargo fuzz run {target} {path}`.
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "fuzz input {} fails", path.display());
        }
    }
}
