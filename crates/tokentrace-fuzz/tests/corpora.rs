//! The minimised fuzz corpora (`fuzz/corpus/<target>/`), and the inputs that once failed
//! (`fuzz/regressions/<target>/`), replayed through the same functions the fuzzer drives.

use std::path::Path;

#[test]
fn every_corpus_input_runs_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut ran = 0;
    for (name, target) in tokentrace_fuzz::TARGETS {
        let mut own = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(data) = std::fs::read(entry.path()) else {
                    continue;
                };
                target(&data);
                own += 1;
            }
        }
        assert!(own > 0, "fuzz/corpus/{name} holds no inputs");
        ran += own;
    }
    println!("{ran} inputs replayed");
}
