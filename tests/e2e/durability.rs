//! Torn writes, corruption and a full disk, on real files: the write-ahead log and the checkpoint
//! store recover a cut tail, refuse corruption in the middle (saying where), and a full disk is a
//! clear error that leaves a store a restart can use.

use crate::common::{run_in, sluice};
use sluice_core::arrow::array::{Int64Array, RecordBatch};
use sluice_core::arrow::datatypes::{DataType, Field, Schema};
use sluice_wal::{Changes, Log, Store, SyncPolicy};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn block(i: i64, rows: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
    RecordBatch::try_new(
        schema,
        vec![Arc::new(Int64Array::from_iter_values(
            i * 1000..i * 1000 + rows,
        ))],
    )
    .unwrap()
}

/// Append `n` blocks and wait until each is durable.
async fn fill(dir: &Path, n: i64) -> Vec<(u64, u64)> {
    let (log, rec) = Log::open(dir, SyncPolicy::EveryBlock, 64 << 20).unwrap();
    assert!(rec.last_seq.is_none());
    let mut offsets = Vec::new();
    let mut at = 0;
    for i in 0..n {
        let b = block(i, 100);
        let (seq, durable) = log
            .append(&b, &serde_json::json!({ "next": i + 1 }))
            .unwrap();
        durable.await.unwrap().unwrap();
        let len = std::fs::metadata(segment(dir)).unwrap().len();
        offsets.push((at, len));
        at = len;
        assert_eq!(seq, i as u64);
    }
    offsets
}

fn segment(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

#[tokio::test]
async fn wal_torn_tail_recovers_to_the_last_whole_block() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = fill(dir.path(), 10).await;
    // Cut the file in the middle of the last record, as a crash mid-write would.
    let (start, end) = offsets[9];
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(segment(dir.path()))
        .unwrap();
    f.set_len(start + (end - start) / 2).unwrap();
    drop(f);
    let (log, rec) = Log::open(dir.path(), SyncPolicy::EveryBlock, 64 << 20).unwrap();
    let (file, offset, dropped) = rec.torn.expect("the torn tail is reported");
    assert_eq!(file, segment(dir.path()));
    assert_eq!(offset, start);
    assert_eq!(dropped, (end - start) / 2);
    assert_eq!(rec.last_seq, Some(8));
    assert_eq!(rec.last_position, Some(serde_json::json!({ "next": 9 })));
    let blocks = log.read(0, 8).unwrap();
    for (i, e) in blocks.iter().enumerate() {
        assert_eq!(e.batch, block(i as i64, 100));
    }
    // Appending continues right after the last whole block.
    let (seq, durable) = log.append(&block(99, 3), &serde_json::Value::Null).unwrap();
    durable.await.unwrap().unwrap();
    assert_eq!(seq, 9);
    assert_eq!(log.read(9, 9).unwrap()[0].batch, block(99, 3));
}

#[tokio::test]
async fn wal_zero_filled_tail_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = fill(dir.path(), 3).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(segment(dir.path()))
        .unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);
    let (_log, rec) = Log::open(dir.path(), SyncPolicy::EveryBlock, 64 << 20).unwrap();
    assert_eq!(rec.last_seq, Some(2));
    assert_eq!(rec.torn.unwrap().1, offsets[2].1);
}

#[tokio::test]
async fn wal_corruption_in_the_middle_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = fill(dir.path(), 10).await;
    let (start, end) = offsets[4];
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment(dir.path()))
        .unwrap();
    let at = start + (end - start) - 10;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[0xff, 0x00, 0xff]).unwrap();
    drop(f);
    let err = Log::open(dir.path(), SyncPolicy::EveryBlock, 64 << 20)
        .err()
        .expect("corruption is refused")
        .to_string();
    assert!(err.contains("corrupt WAL record"), "{err}");
    assert!(err.contains(&format!("at byte {start}")), "{err}");
    assert!(
        err.contains(&segment(dir.path()).display().to_string()),
        "{err}"
    );
}

/// Issue 18, defect 9: a flipped high bit in a middle record's length pointed past the end of the
/// file and was read as a torn tail: the log was cut there, dropping records 4..9 that an MQTT
/// source had already acknowledged. It is corruption, refused; `repair` keeps every whole record.
#[tokio::test]
async fn wal_flipped_length_bit_in_the_middle_is_corruption_and_repair_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = fill(dir.path(), 10).await;
    let seg = segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[offsets[4].0 as usize + 3] ^= 0x80;
    std::fs::write(&seg, &bytes).unwrap();
    let err = Log::open(dir.path(), SyncPolicy::EveryBlock, 64 << 20)
        .err()
        .expect("a damaged length in the middle is refused, not cut off as a torn tail")
        .to_string();
    assert!(err.contains("corrupt WAL record"), "{err}");
    assert!(err.contains(&format!("at byte {}", offsets[4].0)), "{err}");
    assert!(err.contains("sluice checkpoint repair"), "{err}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was truncated");

    let repaired = sluice_wal::repair(dir.path()).unwrap();
    assert_eq!(repaired.len(), 1);
    let r = &repaired[0];
    assert_eq!(r.kept, 9);
    assert_eq!(r.lost_seqs, vec![4..=4]);
    assert_eq!(
        std::fs::read(&r.saved_as).unwrap(),
        bytes,
        "the original is kept aside"
    );
    let (log, rec) = Log::open(dir.path(), SyncPolicy::EveryBlock, 64 << 20).unwrap();
    assert_eq!(rec.last_seq, Some(9));
    for i in (0..10).filter(|&i| i != 4) {
        assert_eq!(log.read(i, i).unwrap()[0].batch, block(i as i64, 100));
    }
    assert!(
        log.read(3, 5).is_err(),
        "a range needing the lost record is refused"
    );
}

fn store_log(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("a RocksDB log file")
}

fn fill_store(dir: &Path) {
    let s = Store::open(dir).unwrap();
    for i in 0..50 {
        let mut c = Changes::default();
        c.put(&format!("k{i:03}"), &[b'x'; 200]);
        c.put_json("last", &i);
        s.write(c).unwrap();
    }
}

#[test]
fn checkpoint_store_torn_tail_recovers_to_the_last_whole_commit() {
    let dir = tempfile::tempdir().unwrap();
    fill_store(dir.path());
    let log = store_log(dir.path());
    let len = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let s = Store::open(dir.path()).unwrap();
    let last: i64 = s.get_json("last").unwrap().unwrap();
    assert_eq!(
        last, 48,
        "the cut commit is gone, the one before it is whole"
    );
    assert!(s.get("k048").unwrap().is_some());
    assert!(
        s.get("k049").unwrap().is_none(),
        "a commit is all or nothing"
    );
}

#[test]
fn checkpoint_store_corruption_in_the_middle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fill_store(dir.path());
    let log = store_log(dir.path());
    let len = std::fs::metadata(&log).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
    drop(f);
    let err = match Store::open(dir.path()) {
        Ok(s) => panic!("opened; last = {:?}", s.get_json::<i64>("last")),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("Corruption"), "{err}");
    assert!(
        err.contains("restore it from a backup or delete the directory"),
        "{err}"
    );
}

/// The whole gateway on a corrupted WAL: exit 1, the file and the byte offset in the message.
#[test]
fn gateway_refuses_a_corrupted_wal() {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"
[app]
name = "corrupt"
batch_interval = "100ms"
checkpoint_dir = "checkpoint"

[sources.g]
type = "generator"
kind = "words"
rate = 5000
count = 3000

[jobs.copy]
sql = "SELECT line FROM g"
sinks = ["out"]

[sinks.out]
type = "blackhole"
"#,
    )
    .unwrap();
    let ok = sluice()
        .current_dir(&dir)
        .args(["run", "pipeline.toml", "--duration", "2s"])
        .status()
        .unwrap();
    assert!(ok.success());
    let seg_dir = dir.join("checkpoint/wal/g");
    let seg = segment(&seg_dir);
    let len = std::fs::metadata(&seg).unwrap().len();
    assert!(
        len > 1000,
        "the WAL holds the received blocks ({len} bytes)"
    );
    let mut f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.seek(SeekFrom::Start(len / 3)).unwrap();
    f.write_all(&[0x55; 8]).unwrap();
    drop(f);
    let out = sluice()
        .current_dir(&dir)
        .args(["run", "pipeline.toml", "--duration", "1s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("corrupt WAL record in"), "{err}");
    assert!(err.contains("at byte"), "{err}");
    // The repair command saves the segment aside, keeps the whole records, and the gateway runs.
    let out = sluice()
        .current_dir(&dir)
        .args(["checkpoint", "repair", "checkpoint"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("repaired ") && report.contains("saved as"),
        "{report}"
    );
    let out = sluice()
        .current_dir(&dir)
        .args(["run", "pipeline.toml", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A checkpoint directory on a 2 MiB tmpfs fills up: the gateway stops with a clear error, and
/// the checkpoint, copied to a roomy disk, resumes. Needs root (mount), and fails without it.
#[test]
fn full_disk_is_a_clear_error_and_leaves_a_usable_checkpoint() {
    let dir = tempfile::tempdir().unwrap().keep();
    let small = dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    // A test that passes without running proves nothing: without a tmpfs this fails.
    assert!(
        mounted,
        "cannot mount a 2 MiB tmpfs on {}: this test needs root (CI runs as root)",
        small.display()
    );
    let cfg = |ck: &str| {
        format!(
            r#"
[app]
name = "full"
batch_interval = "100ms"
checkpoint_dir = "{ck}"

[sources.g]
type = "generator"
kind = "words"
rate = 200000
words_per_line = 20

[jobs.copy]
sql = "SELECT count(*) AS n FROM g"
sinks = ["out"]

[sinks.out]
type = "blackhole"
"#
        )
    };
    std::fs::write(dir.join("pipeline.toml"), cfg("small/checkpoint")).unwrap();
    let out = sluice()
        .current_dir(&dir)
        .args(["run", "pipeline.toml", "--duration", "20s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    // Keep a copy before unmounting.
    let copy = std::process::Command::new("cp")
        .args(["-a", "small/checkpoint", "checkpoint"])
        .current_dir(&dir)
        .status()
        .unwrap();
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("disk is full"), "{err}");
    assert!(copy.success());
    std::fs::write(dir.join("pipeline.toml"), cfg("checkpoint")).unwrap();
    let out = sluice()
        .current_dir(&dir)
        .env("RUST_LOG", "info")
        .args(["run", "pipeline.toml", "--duration", "1s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming from the checkpoint"), "{err}");
}

/// Compatible changes resume from the checkpoint; incompatible ones are refused with exit 2 and
/// what changed.
#[test]
fn checkpoint_accepts_compatible_changes_and_refuses_incompatible_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |key: &str, extra_sink: bool, source: &str| {
        format!(
            r#"
[app]
name = "changes"
batch_interval = "{interval}"
checkpoint_dir = "checkpoint"

[sources.{source}]
type = "generator"
kind = "sensors"
rate = 500
format = "json"
schema = "device string, site string, ts int64, temperature double, humidity double"

[jobs.totals]
sql = "SELECT coalesce(s.{key}, b.{key}) AS {key}, coalesce(s.n, 0) + coalesce(b.n, 0) AS n FROM state s FULL JOIN (SELECT {key}, count(*) AS n FROM {source} GROUP BY {key}) b ON s.{key} = b.{key}"
state = {{ key = ["{key}"], schema = "{key} string, n bigint" }}
sinks = [{sinks}]

[sinks.a]
type = "blackhole"

[sinks.b]
type = "blackhole"
"#,
            interval = if extra_sink { "200ms" } else { "100ms" },
            sinks = if extra_sink { "\"a\", \"b\"" } else { "\"a\"" },
        )
    };
    let run = |toml: String| run_in(dir.path(), &toml, "1s");
    let (code, log) = run(cfg("device", false, "g"));
    assert_eq!(code, Some(0), "{log}");
    // A new sink and a longer batch interval: resumes, with the state.
    let (code, log) = run(cfg("device", true, "g"));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("resuming from the checkpoint"), "{log}");
    assert!(log.contains("state restored"), "{log}");
    // A changed state key: refused.
    let (code, err) = run(cfg("site", true, "g"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("pipeline.toml: key `app.checkpoint_dir`"),
        "{err}"
    );
    assert!(
        err.contains("the state key of job `totals` changed from [device] to [site]"),
        "{err}"
    );
    assert!(err.contains("delete"), "{err}");
    // A removed (renamed) source: refused.
    let (code, err) = run(cfg("device", true, "h"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("source `g` (type generator) was removed"),
        "{err}"
    );
}
