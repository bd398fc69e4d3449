//! The `object_store` sink against a real S3 server: `s3s-fs` (which checks SigV4) started here on
//! a loopback port of its own. Objects are read back from the server's folder with the `parquet`,
//! arrow and `apache-avro` readers and, independently, with pyarrow and fastavro.

use crate::crash::{assert_exactly_once, kills, seed, start, stop};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

const AK: &str = "sluice-test-key";
const SK: &str = "sluice-test-secret";

/// An s3s-fs server on 127.0.0.1, stopped when dropped. Buckets are folders of `root`.
pub struct S3 {
    pub port: u16,
    pub root: PathBuf,
    child: Child,
}

pub(crate) use sluice_testkit::tools_dir as tools;

impl S3 {
    pub fn start(dir: &Path, buckets: &[&str]) -> S3 {
        let root = dir.join("s3");
        for b in buckets {
            std::fs::create_dir_all(root.join(b)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Self::launch(port, &root);
        S3 { port, root, child }
    }

    fn launch(port: u16, root: &Path) -> Child {
        sluice_testkit::s3s_fs::start_s3s_fs(port, root, AK, SK).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Kill the server, keep it down for `down`, start it again on the same port and folder.
    pub fn restart_after(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Self::launch(self.port, &self.root);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The sink keys that reach this server.
    pub fn keys(&self, bucket_path: &str, secret: &str) -> String {
        format!(
            "path = \"s3://{bucket_path}\"\nendpoint = \"{}\"\naccess_key_id = \"{AK}\"\nsecret_access_key = \"{secret}\"\nretry_initial = \"50ms\"\nmax_retries = 3\n",
            self.endpoint()
        )
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The manifest entries under a sink's folder (on the server's disk), in batch order.
pub(crate) fn entries(dir: &Path, job: &str) -> Vec<Value> {
    let m = dir.join("_sluice/manifest").join(job);
    let mut names: Vec<PathBuf> = match std::fs::read_dir(&m) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => return Vec::new(),
    };
    names.retain(|p| p.extension().is_some_and(|x| x == "json"));
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// The data objects the manifest lists for `job`, relative to `dir`.
pub(crate) fn committed_files(dir: &Path, job: &str) -> Vec<String> {
    entries(dir, job)
        .iter()
        .flat_map(|e| e["files"].as_array().unwrap().clone())
        .map(|f| f["key"].as_str().unwrap().to_string())
        .collect()
}

/// `device|ts` of every row of a data object, read with the Rust readers.
pub(crate) fn rows_of(path: &Path) -> Vec<String> {
    let name = path.to_string_lossy().to_string();
    let bytes = std::fs::read(path).unwrap();
    let text = |b: Vec<u8>| -> String {
        if name.ends_with(".gz") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&b[..]), &mut s)
                .unwrap();
            s
        } else if name.ends_with(".zst") {
            String::from_utf8(zstd::decode_all(&b[..]).unwrap()).unwrap()
        } else {
            String::from_utf8(b).unwrap()
        }
    };
    if name.ends_with(".parquet") {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
            bytes::Bytes::from(bytes),
            1024,
        )
        .unwrap();
        let mut out = Vec::new();
        for b in reader {
            let b = b.unwrap();
            let d = arrow::compute::cast(
                b.column_by_name("device").unwrap(),
                &arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let t = arrow::compute::cast(
                b.column_by_name("ts").unwrap(),
                &arrow::datatypes::DataType::Int64,
            )
            .unwrap();
            use arrow::array::AsArray;
            for i in 0..b.num_rows() {
                out.push(format!(
                    "{}|{}",
                    d.as_string::<i32>().value(i),
                    t.as_primitive::<arrow::datatypes::Int64Type>().value(i)
                ));
            }
        }
        out
    } else if name.contains(".json") {
        text(bytes)
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                format!("{}|{}", v["device"].as_str().unwrap(), v["ts"])
            })
            .collect()
    } else if name.contains(".csv") {
        let t = text(bytes);
        let mut lines = t.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let (d, ts) = (
            header.iter().position(|h| *h == "device").unwrap(),
            header.iter().position(|h| *h == "ts").unwrap(),
        );
        lines
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                format!("{}|{}", f[d], f[ts])
            })
            .collect()
    } else if name.ends_with(".avro") {
        apache_avro::Reader::new(&bytes[..])
            .unwrap()
            .map(|r| {
                let apache_avro::types::Value::Record(fields) = r.unwrap() else {
                    panic!("not a record")
                };
                let get = |k: &str| fields.iter().find(|(n, _)| n == k).unwrap().1.clone();
                let un = |v: apache_avro::types::Value| match v {
                    apache_avro::types::Value::Union(_, b) => *b,
                    v => v,
                };
                let (apache_avro::types::Value::String(d), apache_avro::types::Value::Long(t)) =
                    (un(get("device")), un(get("ts")))
                else {
                    panic!("unexpected avro types")
                };
                format!("{d}|{t}")
            })
            .collect()
    } else {
        panic!("unknown object {name}")
    }
}

pub(crate) fn committed_rows(dir: &Path, job: &str) -> Vec<String> {
    committed_files(dir, job)
        .iter()
        .flat_map(|k| rows_of(&dir.join(k)))
        .collect()
}

/// The generator's records as `device|ts`.
pub(crate) fn generated(count: u64, rate: u64) -> Vec<String> {
    let cfg: sluice_generator::GeneratorConfig = serde_json::from_value(serde_json::json!({
        "kind": "sensors", "rate": rate, "count": count, "start_ms": 1700000000000i64, "devices": 12
    }))
    .unwrap();
    let mut w = sluice_generator::Workload::new(&cfg);
    w.take(count as usize)
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            format!("{}|{}", v["device"].as_str().unwrap(), v["ts"])
        })
        .collect()
}

pub(crate) fn pipeline(name: &str, count: u64, rate: u64, sinks: &str) -> String {
    let names: Vec<String> = sinks
        .lines()
        .filter_map(|l| l.strip_prefix("[sinks."))
        .map(|l| format!("\"{}\"", l.trim_end_matches(']')))
        .collect();
    format!(
        r#"
[app]
name = "{name}"
batch_interval = "100ms"
checkpoint_dir = "checkpoint"

[sources.readings]
type = "generator"
kind = "sensors"
rate = {rate}
count = {count}
start_ms = 1700000000000
devices = 12
format = "json"
schema = "device string, site string, ts int64, temperature double, humidity double"

[jobs.copy]
sql = "SELECT device, site, ts, to_timestamp_millis(ts) AS at, temperature FROM readings"
sinks = [{}]
{sinks}"#,
        names.join(", ")
    )
}

pub(crate) use sluice_testkit::wait_for;

pub(crate) fn committed_count(dir: &Path, job: &str) -> u64 {
    entries(dir, job)
        .iter()
        .map(|e| e["rows"].as_u64().unwrap())
        .sum()
}

/// pyarrow / fastavro / zstandard (installed by scripts/deps.sh --tests) count the rows of the objects and sum `ts`.
pub(crate) fn python_check(files: &[PathBuf]) -> (u64, i64) {
    let py = tools().join("python-venv/bin/python");
    let script = r#"
import sys, json, gzip
rows, total = 0, 0
for path in sys.argv[1:]:
    if path.endswith('.parquet'):
        import pyarrow.parquet as pq
        t = pq.read_table(path)
        rows += t.num_rows; total += sum(t.column('ts').to_pylist())
    elif path.endswith('.avro'):
        import fastavro
        with open(path, 'rb') as f:
            for r in fastavro.reader(f):
                rows += 1; total += r['ts']
    elif '.csv' in path:
        import pyarrow.csv as pc
        t = pc.read_csv(path)
        rows += t.num_rows; total += sum(t.column('ts').to_pylist())
    elif '.json' in path:
        if path.endswith('.zst'):
            import zstandard, io
            f = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, 'rb')))
        else:
            f = (gzip.open if path.endswith('.gz') else open)(path, 'rt')
        with f:
            for line in f:
                rows += 1; total += json.loads(line)['ts']
print(rows, total)
"#;
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .args(files)
        .output()
        .expect("the test venv's python (scripts/deps.sh --tests makes it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python reader failed: {err}");
    let s = String::from_utf8(out.stdout).unwrap();
    let mut it = s.split_whitespace().map(|v| v.parse::<i64>().unwrap());
    (it.next().unwrap() as u64, it.next().unwrap())
}

#[test]
fn object_store_every_format_reads_back_equal_to_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3::start(tmp.path(), &["lake"]);
    let sinks = [
        (
            "pq",
            "format = \"parquet\"\ncompression = \"zstd\"\nrow_group_rows = 500",
        ),
        ("pqs", "format = \"parquet\"\ncompression = \"snappy\""),
        ("js", "format = \"json\"\ncompression = \"gzip\""),
        ("jz", "format = \"json\"\ncompression = \"zstd\""),
        ("cs", "format = \"csv\""),
        ("av", "format = \"avro\"\ncompression = \"deflate\""),
    ];
    let mut toml = String::new();
    for (name, keys) in sinks {
        toml.push_str(&format!(
            "\n[sinks.{name}]\ntype = \"object_store\"\n{}{keys}\n",
            s3.keys(&format!("lake/{name}"), SK)
        ));
    }
    let gw = tmp.path().join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    std::fs::write(
        gw.join("pipeline.toml"),
        pipeline("os-formats", 3000, 3000, &toml),
    )
    .unwrap();
    let child = start(&gw);
    wait_for("3000 rows in every sink", Duration::from_secs(60), || {
        sinks
            .iter()
            .all(|(n, _)| committed_count(&s3.root.join("lake").join(n), "copy") >= 3000)
    });
    stop(child);
    let expected = generated(3000, 3000);
    let ts_sum: i64 = expected
        .iter()
        .map(|r| r.split('|').nth(1).unwrap().parse::<i64>().unwrap())
        .sum();
    for (name, _) in sinks {
        let dir = s3.root.join("lake").join(name);
        assert_exactly_once(name, &expected, &committed_rows(&dir, "copy"));
        let files: Vec<PathBuf> = committed_files(&dir, "copy")
            .iter()
            .map(|k| dir.join(k))
            .collect();
        assert_eq!(
            python_check(&files),
            (3000, ts_sum),
            "{name} read by pyarrow/fastavro"
        );
    }
}

#[test]
fn object_store_partitions_by_time_and_column_and_rolls_files_across_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3::start(tmp.path(), &["lake"]);
    let toml = format!(
        "\n[sinks.parts]\ntype = \"object_store\"\n{}format = \"parquet\"\npartition_by = [\"site\"]\ntime_partition = \"dt=%Y-%m-%d/minute=%M\"\ntime_column = \"at\"\nkey_prefix = \"{{job}}/%Y\"\nmax_file_age = \"1s\"\n",
        s3.keys("lake/parts", SK)
    );
    let gw = tmp.path().join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    // 4000 records at 1000/s: 4 s of event time, over a minute boundary? ts starts at
    // 1700000000000 = 2023-11-14 22:13:20 UTC, so minutes 13 only; sites split the rest.
    std::fs::write(
        gw.join("pipeline.toml"),
        pipeline("os-parts", 4000, 1000, &toml),
    )
    .unwrap();
    let child = start(&gw);
    let dir = s3.root.join("lake/parts");
    wait_for("4000 rows", Duration::from_secs(60), || {
        committed_count(&dir, "copy") >= 4000
    });
    stop(child);
    let files = committed_files(&dir, "copy");
    assert!(!files.is_empty());
    let mut rows = Vec::new();
    for f in &files {
        // copy/2023/dt=2023-11-14/minute=13/site=<site>/copy-<first batch>.parquet
        let parts: Vec<&str> = f.split('/').collect();
        assert_eq!(parts.len(), 6, "{f}");
        // The key prefix's year is the batch time's, the folders the event time's.
        let first: i64 = parts[5]
            .trim_start_matches("copy-")
            .trim_end_matches(".parquet")
            .parse()
            .expect(f);
        let year = chrono::DateTime::from_timestamp_millis(first)
            .unwrap()
            .format("%Y")
            .to_string();
        assert_eq!(
            &parts[..4],
            ["copy", year.as_str(), "dt=2023-11-14", "minute=13"],
            "{f}"
        );
        let site = parts[4].strip_prefix("site=").expect(f);
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
            bytes::Bytes::from(std::fs::read(dir.join(f)).unwrap()),
            4096,
        )
        .unwrap();
        for b in reader {
            let b = b.unwrap();
            use arrow::array::AsArray;
            let sites = b.column_by_name("site").unwrap().as_string::<i32>();
            assert!(
                sites.iter().all(|s| s == Some(site)),
                "{f} holds another site"
            );
        }
        rows.extend(rows_of(&dir.join(f)));
    }
    assert_exactly_once("partitioned", &generated(4000, 1000), &rows);
    // Files span batches: far fewer files than (batches × folders), and the staged pieces are
    // gone after the graceful stop.
    let batches = entries(&dir, "copy").len();
    let sites: std::collections::BTreeSet<&str> =
        files.iter().map(|f| f.split('/').nth(4).unwrap()).collect();
    assert!(
        files.len() < batches * sites.len() / 2,
        "{} files for {batches} batches and {} sites",
        files.len(),
        sites.len()
    );
    let staging = dir.join("_sluice/staging");
    let left: Vec<_> = walk(&staging);
    assert!(left.is_empty(), "staged pieces left: {left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// 20 SIGKILLs while the gateway writes a per-batch sink and a rolling one: the objects the
/// manifests list hold every record exactly once.
#[test]
fn object_store_survives_20_sigkills_exactly_once() {
    let seed = seed();
    let n = kills(20);
    eprintln!("seed {seed}, {n} kills");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3::start(tmp.path(), &["lake"]);
    let toml = format!(
        "\n[sinks.batches]\ntype = \"object_store\"\n{}format = \"json\"\n\n[sinks.rolled]\ntype = \"object_store\"\n{}format = \"parquet\"\nmax_file_size = \"40KiB\"\nmax_file_age = \"2s\"\npartition_by = [\"site\"]\n\n[sinks.out]\ntype = \"file\"\npath = \"out\"\n",
        s3.keys("lake/batches", SK),
        s3.keys("lake/rolled", SK)
    );
    let gw = tmp.path().join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    let count = 20_000;
    std::fs::write(
        gw.join("pipeline.toml"),
        pipeline("os-crash", count, 1000, &toml),
    )
    .unwrap();
    // First a kill certainly between a batch's plan and its commit: the local file sink `out`
    // (written after the two object-store sinks) stops on a FIFO.
    crate::crash::kill_mid_batch(&gw, 100, || {});
    for _ in 0..n {
        let mut child = start(&gw);
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let child = start(&gw);
    let (b, r) = (s3.root.join("lake/batches"), s3.root.join("lake/rolled"));
    wait_for("every record", Duration::from_secs(120), || {
        committed_count(&b, "copy") >= count && committed_count(&r, "copy") >= count
    });
    stop(child);
    let expected = generated(count, 1000);
    assert_exactly_once("per-batch objects", &expected, &committed_rows(&b, "copy"));
    assert_exactly_once("rolled objects", &expected, &committed_rows(&r, "copy"));
    let log = std::fs::read_to_string(gw.join("gateway.log")).unwrap();
    assert!(n == 0 || log.contains("resuming from the checkpoint"));
    crate::crash::assert_rerun(&gw);
}

pub(crate) fn run_expecting_failure(dir: &Path, toml: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("pipeline.toml"), toml).unwrap();
    let out = crate::common::sluice()
        .current_dir(dir)
        .args(["run", "pipeline.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected a failure: {err}");
    err
}

#[test]
fn object_store_wrong_secret_missing_bucket_and_unreachable_endpoint_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3::start(tmp.path(), &["lake"]);
    let sink = |keys: String| {
        pipeline(
            "os-errors",
            100,
            1000,
            &format!("\n[sinks.out]\ntype = \"object_store\"\n{keys}"),
        )
    };

    let err = run_expecting_failure(
        &tmp.path().join("a"),
        &sink(s3.keys("lake/x", "wrong-secret")),
    );
    assert!(err.contains("sink `out`"), "{err}");
    assert!(err.contains(&s3.endpoint()), "{err}");
    assert!(
        err.contains("access denied") && err.contains("secret_access_key"),
        "{err}"
    );
    assert!(
        !err.contains("wrong-secret"),
        "the secret is never printed: {err}"
    );

    let err = run_expecting_failure(&tmp.path().join("b"), &sink(s3.keys("nope/x", SK)));
    assert!(
        err.contains("sink `out`") && err.contains("bucket `nope`"),
        "{err}"
    );
    assert!(err.contains("does not exist"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let keys = s3
        .keys("lake/x", SK)
        .replace(&s3.endpoint(), &format!("http://127.0.0.1:{closed}"));
    let err = run_expecting_failure(&tmp.path().join("c"), &sink(keys));
    assert!(
        err.contains("sink `out`") && err.contains("cannot reach"),
        "{err}"
    );
    assert!(err.contains("endpoint"), "{err}");
}

/// `configs/sensors-to-s3.toml` against s3s-fs (its endpoint and keys overridden from the
/// environment): readings land partitioned by hour and site, per-batch summaries as JSON lines.
#[test]
fn sensors_to_s3_example_lands_a_partitioned_lake() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3::start(tmp.path(), &["lake"]);
    let gw = tmp.path().join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    let mut cmd = crate::common::sluice();
    cmd.current_dir(&gw)
        .arg("run")
        .arg(crate::common::repo().join("configs/sensors-to-s3.toml"))
        .args(["--duration", "4s"]);
    for sink in ["READINGS", "SUMMARIES"] {
        cmd.env(format!("SLUICE__SINKS__{sink}__ENDPOINT"), s3.endpoint())
            .env(format!("SLUICE__SINKS__{sink}__ACCESS_KEY_ID"), AK)
            .env(format!("SLUICE__SINKS__{sink}__SECRET_ACCESS_KEY"), SK);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let readings = s3.root.join("lake/readings");
    let files = committed_files(&readings, "readings");
    assert!(!files.is_empty(), "no readings committed");
    // The graceful stop rolled the open files: every committed row is in a listed object.
    let rows: u64 = entries(&readings, "readings")
        .iter()
        .map(|e| e["rows"].as_u64().unwrap())
        .sum();
    let in_files: u64 = entries(&readings, "readings")
        .iter()
        .flat_map(|e| e["files"].as_array().unwrap().clone())
        .map(|f| f["rows"].as_u64().unwrap())
        .sum();
    assert!(rows > 0);
    assert_eq!(rows, in_files);
    for f in &files {
        let parts: Vec<&str> = f.split('/').collect();
        assert!(
            parts[0].starts_with("dt=")
                && parts[1].starts_with("hour=")
                && parts[2].starts_with("site="),
            "{f}"
        );
    }
    let summaries = committed_files(&s3.root.join("lake/summaries"), "site_batches");
    assert!(!summaries.is_empty());
    assert!(
        summaries
            .iter()
            .all(|k| k.starts_with("site_batches/20") && k.ends_with(".json")),
        "{summaries:?}"
    );
}

/// The store goes away for 1.5 s in the middle of a run: requests are retried with backoff (and
/// logged), the batches wait, and every record lands once.
#[test]
fn object_store_retries_while_the_store_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s3 = S3::start(tmp.path(), &["lake"]);
    let keys = s3
        .keys("lake/out", SK)
        .replace("max_retries = 3", "max_retries = 12\nretry_max = \"500ms\"");
    let toml = format!("\n[sinks.out]\ntype = \"object_store\"\n{keys}format = \"json\"\n");
    let gw = tmp.path().join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    std::fs::write(
        gw.join("pipeline.toml"),
        pipeline("os-retry", 4000, 1000, &toml),
    )
    .unwrap();
    let child = start(&gw);
    let dir = s3.root.join("lake/out");
    wait_for("1000 rows", Duration::from_secs(60), || {
        committed_count(&dir, "copy") >= 1000
    });
    s3.restart_after(Duration::from_millis(1500));
    wait_for("4000 rows", Duration::from_secs(120), || {
        committed_count(&dir, "copy") >= 4000
    });
    stop(child);
    assert_exactly_once(
        "store down",
        &generated(4000, 1000),
        &committed_rows(&dir, "copy"),
    );
    let log = std::fs::read_to_string(gw.join("gateway.log")).unwrap();
    assert!(
        log.contains("object store request failed; retrying") && log.contains("sinks.out"),
        "the retries are logged"
    );
}

/// Copy every object under `prefix` of the store a sink with `options` writes to into `local`, so
/// the folder-reading helpers can check stores that are not on this disk.
pub(crate) fn mirror(options: Value, prefix: &str, local: &Path) {
    let op = sluice_object_store::operator(options, local).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listed = match op.list_with(prefix).recursive(true).await {
            Ok(listed) => listed,
            // Nothing written yet (stores with real folders say so).
            Err(e) if e.kind() == sluice_object_store::opendal::ErrorKind::NotFound => return,
            Err(e) => panic!("listing {prefix}: {e}"),
        };
        for e in listed {
            if e.metadata().is_dir() {
                continue;
            }
            let body = op.read(e.path()).await.unwrap().to_vec();
            let to = local.join(e.path());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(to, body).unwrap();
        }
    });
}

/// HDFS through WebHDFS, when `SLUICE_TEST_WEBHDFS` names a NameNode's HTTP address (`host:port`,
/// e.g. `127.0.0.1:9870`; `SLUICE_TEST_WEBHDFS_USER` sets `hdfs_user`). No NameNode can be run
/// here, so the test is ignored unless `tests/run.sh` sees the variable and asks for it.
#[test]
#[ignore = "needs a WebHDFS endpoint: SLUICE_TEST_WEBHDFS=host:port tests/run.sh"]
fn object_store_on_webhdfs() {
    let endpoint = std::env::var("SLUICE_TEST_WEBHDFS")
        .expect("SLUICE_TEST_WEBHDFS=host:port of a NameNode's WebHDFS");
    let endpoint = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let root = format!("/tmp/sluice-e2e-{}", sluice_core::time::now_ms());
    let user = std::env::var("SLUICE_TEST_WEBHDFS_USER").ok();
    let user_key = user
        .as_deref()
        .map(|u| format!("hdfs_user = \"{u}\"\n"))
        .unwrap_or_default();
    let toml = format!(
        "\n[sinks.js]\ntype = \"object_store\"\npath = \"webhdfs://{endpoint}{root}/js\"\n{user_key}format = \"json\"\n\n[sinks.pq]\ntype = \"object_store\"\npath = \"webhdfs://{endpoint}{root}/pq\"\n{user_key}format = \"parquet\"\nmax_file_age = \"1s\"\n"
    );
    let tmp = tempfile::tempdir().unwrap();
    let gw = tmp.path().join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    std::fs::write(
        gw.join("pipeline.toml"),
        pipeline("hdfs", 2000, 1000, &toml),
    )
    .unwrap();
    let local = tmp.path().join("mirror");
    let options = |sink: &str| {
        let mut o = serde_json::json!({ "path": format!("webhdfs://{endpoint}{root}/{sink}") });
        if let Some(u) = &user {
            o["hdfs_user"] = Value::from(u.as_str());
        }
        o
    };
    let committed = |sink: &str| {
        let to = local.join(sink);
        let _ = std::fs::remove_dir_all(&to);
        mirror(options(sink), "_sluice/manifest/", &to);
        committed_count(&to, "copy")
    };
    let child = start(&gw);
    wait_for("2000 rows in both sinks", Duration::from_secs(120), || {
        committed("js") >= 2000 && committed("pq") >= 2000
    });
    stop(child);
    for sink in ["js", "pq"] {
        let to = local.join(sink);
        let _ = std::fs::remove_dir_all(&to);
        mirror(options(sink), "", &to);
        assert_exactly_once(sink, &generated(2000, 1000), &committed_rows(&to, "copy"));
    }
}

/// Over 200 MB of JSON lines staged batch by batch and joined into one object at the graceful
/// stop, uploaded in 8 MiB parts: while the gateway writes that object its heap stays far below the
/// object's size (it streams), its peak RSS stays under 400 MB, and every line arrives once, in order.
#[test]
fn object_store_writes_200_mb_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3::start(tmp.path(), &["lake"]);
    let lines: u64 = 21_000;
    let toml = format!(
        r#"
[app]
name = "os-large"
batch_interval = "1s"
checkpoint_dir = "checkpoint"

[sources.text]
type = "generator"
kind = "words"
words_per_line = 1000
rate = 1500
count = {lines}

[jobs.copy]
sql = "SELECT line FROM text"
# One partition keeps the generator's order, which the check below relies on.
partitions = 1
sinks = ["big"]

[sinks.big]
type = "object_store"
{}format = "json"
max_file_size = "1GiB"
max_file_age = "1h"
part_size = "8MiB"
"#,
        s3.keys("lake/big", SK)
    );
    let gw = tmp.path().join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    std::fs::write(gw.join("pipeline.toml"), toml).unwrap();
    let mut child = start(&gw);
    let pid = child.id();
    let dir = s3.root.join("lake/big");
    wait_for("every line staged", Duration::from_secs(600), || {
        committed_count(&dir, "copy") >= lines
    });
    assert!(
        committed_files(&dir, "copy").is_empty(),
        "rolled before the stop"
    );
    // The graceful stop joins the staged pieces into the object. Heap = anonymous resident memory
    // (the mapped binary and libraries left out), read every 20 ms until the gateway exits.
    let before = sluice_testkit::status_mb(pid, "RssAnon");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let (mut closing, mut peak) = (0f64, 0f64);
    loop {
        closing = closing.max(sluice_testkit::status_mb(pid, "RssAnon"));
        peak = peak.max(sluice_testkit::peak_rss_mb(pid));
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "graceful stop exited with {status}");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let files = committed_files(&dir, "copy");
    assert_eq!(files.len(), 1, "{files:?}");
    let size = std::fs::metadata(dir.join(&files[0])).unwrap().len() >> 20;
    eprintln!(
        "one object of {size} MB; gateway heap {before:.0} MB before the stop, at most {closing:.0} MB while writing the object; peak RSS {peak:.0} MB"
    );
    assert!(size > 200, "only {size} MB written");
    assert!(
        before > 0.0 && closing > 0.0 && peak > 0.0,
        "the gateway's memory was never read"
    );
    // A sink holding the object would need its size on top of what it held before.
    assert!(
        closing < before + (size / 2) as f64,
        "heap rose from {before:.0} MB to {closing:.0} MB while writing a {size} MB object"
    );
    // The issue's memory target for the object-store path (the benchmark's too).
    assert!(peak < 400.0, "peak RSS {peak:.0} MB");

    // Every generated line once, in order.
    let cfg: sluice_generator::GeneratorConfig = serde_json::from_value(serde_json::json!({
        "kind": "words", "words_per_line": 1000, "rate": 1500, "count": lines
    }))
    .unwrap();
    let mut expected = sluice_generator::Workload::new(&cfg);
    let mut line = String::new();
    let mut seen = 0u64;
    for f in &files {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        for got in text.lines() {
            line.clear();
            expected.next_into(&mut line);
            let got = got
                .strip_prefix("{\"line\":\"")
                .and_then(|s| s.strip_suffix("\"}"))
                .unwrap_or_else(|| panic!("{f}: not a `line` record"));
            assert_eq!(got, line, "{f}: line {seen} differs");
            seen += 1;
        }
    }
    assert_eq!(seen, lines);
}
