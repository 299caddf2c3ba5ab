//! Every shipped configuration parses (unknown keys would be refused) and builds its stage.

use skypipe_loadtest::{Loadtest, LoadtestFile};
use std::path::Path;

#[test]
fn shipped_loadtest_configs_parse_and_build() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("loadtest") || !name.ends_with(".toml") {
            continue;
        }
        let file: LoadtestFile =
            skypipe_engine::load_config(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
        file.run
            .validate()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Loadtest::new(file.loadtest).unwrap_or_else(|e| panic!("{name}: {e}"));
        seen += 1;
    }
    assert!(seen >= 2, "expected the example and the demo configuration");
}
