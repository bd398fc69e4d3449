//! Upgrades: a checkpoint and output folders written by an older sluice, kept as fixtures, recover
//! with this one.

use crate::crash::{assert_exactly_once, assert_rerun, start, stop};
use crate::object_store::{committed_count, committed_rows, entries, generated, rows_of};
use sluice_testkit::wait_for;
use std::path::Path;
use std::time::Duration;

/// Copies the folder `from` into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// `tests/fixtures/file-sink-0.1` (see its README): sluice 0.1 (commit bb2a1de) ran a generator of
/// 600 readings into two `file` sinks — `out` (JSON lines) and `parts` (CSV, partitioned by site,
/// `prefix = "sites"`) — and was killed with SIGKILL while a batch was between its plan and its
/// commit. Its file sink kept its own manifest (`_sluice_metadata/`). Today's gateway re-runs the
/// planned batch, converts the old manifests, and every reading is committed exactly once.
#[test]
fn a_checkpoint_and_file_sink_folders_of_sluice_0_1_recover() {
    let dir = tempfile::tempdir().unwrap();
    let gw = dir.path();
    copy_dir(
        &sluice_testkit::repo().join("tests/fixtures/file-sink-0.1"),
        gw,
    );
    for sink in ["out", "parts"] {
        assert!(
            gw.join(sink).join("_sluice_metadata").is_dir(),
            "the fixture is of the old layout"
        );
    }
    let child = start(gw);
    wait_for("the 600 readings", Duration::from_secs(60), || {
        committed_count(&gw.join("out"), "copy") >= 600
            && committed_count(&gw.join("parts"), "copy") >= 600
    });
    stop(child);
    assert_rerun(gw);
    let want = generated(600, 200);
    for sink in ["out", "parts"] {
        let out = gw.join(sink);
        assert!(
            !out.join("_sluice_metadata").exists(),
            "{sink}: one manifest"
        );
        assert_exactly_once(sink, &want, &committed_rows(&out, "copy"));
        // The converted entries are a chain, and count each file's rows.
        let entries = entries(&out, "copy");
        for pair in entries.windows(2) {
            assert_eq!(
                pair[1]["previous"], pair[0]["batch_time"],
                "{sink}: {pair:?}"
            );
        }
        for e in &entries {
            for f in e["files"].as_array().unwrap() {
                let key = f["key"].as_str().unwrap();
                let rows = rows_of(&out.join(key)).len() as u64;
                assert_eq!(f["rows"].as_u64(), Some(rows), "{sink}: {key}");
            }
        }
    }
    // The partitioned sink's names kept their prefix.
    let parts = entries(&gw.join("parts"), "copy");
    assert!(parts
        .iter()
        .any(|e| e["files"].as_array().unwrap().len() > 1));
    for e in &parts {
        for f in e["files"].as_array().unwrap() {
            let key = f["key"].as_str().unwrap();
            assert!(key.starts_with("site=") && key.contains("/sites-"), "{key}");
        }
    }
}
