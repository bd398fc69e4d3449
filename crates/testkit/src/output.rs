//! Reading what a file sink wrote.

use std::path::Path;

/// Every row of the JSON-lines files (`*.json`) directly in `dir`, skipping temporary and hidden
/// files; empty if `dir` does not exist.
pub fn json_rows(dir: &Path) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return rows;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") || !e.path().is_file() {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).expect("read a sink file");
        for l in text.lines() {
            rows.push(serde_json::from_str(l).expect("a JSON line"));
        }
    }
    rows
}
