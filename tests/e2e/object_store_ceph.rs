//! The `object_store` sink against Ceph's S3 gateway (RGW 16.2: one monitor, one memstore OSD,
//! started by `tests/services/ceph-rgw.sh` on loopback ports of its own): a production S3
//! implementation beside s3s-fs. One cluster serves every phase: formats read back (the Rust
//! readers, and pyarrow over S3 as an independent client), a multipart upload, SIGKILLs, and the
//! errors for a wrong secret and a missing bucket.

use crate::crash::{assert_exactly_once, kills, seed, start, stop};
use crate::object_store::{
    committed_count, committed_files, committed_rows, generated, mirror, pipeline,
    run_expecting_failure, tools, wait_for,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_testkit::ceph::Ceph;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const AK: &str = "sluice-ceph-key";
const SK: &str = "sluice-ceph-secret";

/// What these tests do with the cluster beyond starting it.
trait CephExt {
    /// The sink keys that reach this cluster.
    fn keys(&self, bucket_path: &str, secret: &str) -> String;
    /// Copy every object under `prefix` of `bucket` into `local` (the helpers read folders).
    fn mirror(&self, bucket: &str, prefix: &str, local: &Path);
    /// Rows the manifest of `sink` (a folder of bucket `lake`) lists as committed.
    fn committed(&self, sink: &str, local: &Path) -> u64;
}

impl CephExt for Ceph {
    fn keys(&self, bucket_path: &str, secret: &str) -> String {
        format!(
            "path = \"s3://{bucket_path}\"\nendpoint = \"{}\"\naccess_key_id = \"{AK}\"\nsecret_access_key = \"{secret}\"\nretry_initial = \"50ms\"\nmax_retries = 3\n",
            self.endpoint()
        )
    }

    fn mirror(&self, bucket: &str, prefix: &str, local: &Path) {
        mirror(
            serde_json::json!({
                "path": format!("s3://{bucket}"),
                "endpoint": self.endpoint(),
                "access_key_id": AK,
                "secret_access_key": SK,
            }),
            prefix,
            local,
        );
    }

    fn committed(&self, sink: &str, local: &Path) -> u64 {
        let _ = std::fs::remove_dir_all(local.join(sink));
        self.mirror("lake", &format!("{sink}/_sluice/manifest/"), local);
        committed_count(&local.join(sink), "copy")
    }
}

/// pyarrow reading Parquet objects straight from RGW: rows and the sum of `ts`.
fn pyarrow_over_s3(ceph: &Ceph, keys: &[String]) -> (u64, i64) {
    let script = r#"
import sys
import pyarrow.fs as fs, pyarrow.parquet as pq
port, ak, sk = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = fs.S3FileSystem(access_key=ak, secret_key=sk, endpoint_override='127.0.0.1:' + port,
                     scheme='http', region='us-east-1')
rows, total = 0, 0
for key in sys.argv[4:]:
    t = pq.read_table(key, filesystem=s3)
    rows += t.num_rows; total += sum(t.column('ts').to_pylist())
print(rows, total)
"#;
    let out = Command::new(tools().join("python-venv/bin/python"))
        .arg("-c")
        .arg(script)
        .args([&ceph.port.to_string(), AK, SK])
        .args(keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyarrow over S3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    let mut it = s.split_whitespace().map(|v| v.parse::<i64>().unwrap());
    (it.next().unwrap() as u64, it.next().unwrap())
}

#[test]
fn object_store_on_ceph_rgw() {
    let tmp = tempfile::tempdir().unwrap();
    let ceph = Ceph::start(tmp.path(), AK, SK);
    ceph.create_bucket("lake");

    // Formats: Parquet, Avro, gzipped JSON lines and CSV, read back and compared with the input.
    let sinks = [
        ("pq", "format = \"parquet\"\ncompression = \"zstd\""),
        ("av", "format = \"avro\""),
        ("js", "format = \"json\"\ncompression = \"gzip\""),
        ("cs", "format = \"csv\""),
    ];
    let mut toml = String::new();
    for (name, keys) in sinks {
        toml.push_str(&format!(
            "\n[sinks.{name}]\ntype = \"object_store\"\n{}{keys}\n",
            ceph.keys(&format!("lake/{name}"), SK)
        ));
    }
    let gw = tmp.path().join("formats");
    std::fs::create_dir_all(&gw).unwrap();
    std::fs::write(
        gw.join("pipeline.toml"),
        pipeline("ceph-formats", 3000, 3000, &toml),
    )
    .unwrap();
    let child = start(&gw);
    let local = tmp.path().join("mirror");
    wait_for("3000 rows in every sink", Duration::from_secs(120), || {
        sinks.iter().all(|(n, _)| ceph.committed(n, &local) >= 3000)
    });
    stop(child);
    ceph.mirror("lake", "", &local);
    let expected = generated(3000, 3000);
    for (name, _) in sinks {
        assert_exactly_once(name, &expected, &committed_rows(&local.join(name), "copy"));
    }
    let ts_sum: i64 = expected
        .iter()
        .map(|r| r.split('|').nth(1).unwrap().parse::<i64>().unwrap())
        .sum();
    let parquet: Vec<String> = committed_files(&local.join("pq"), "copy")
        .iter()
        .map(|k| format!("lake/pq/{k}"))
        .collect();
    assert_eq!(pyarrow_over_s3(&ceph, &parquet), (3000, ts_sum));

    // Multipart: a ~20 MB object in 5 MiB parts (RGW answers multipart completion without an ETag).
    let lines = 2000u64;
    let toml = format!(
        "[app]\nname = \"ceph-multipart\"\nbatch_interval = \"1s\"\ncheckpoint_dir = \"checkpoint\"\n\n[sources.text]\ntype = \"generator\"\nkind = \"words\"\nwords_per_line = 1000\nrate = 4000\ncount = {lines}\n\n[jobs.copy]\nsql = \"SELECT line FROM text\"\npartitions = 1\nsinks = [\"big\"]\n\n[sinks.big]\ntype = \"object_store\"\n{}format = \"json\"\npart_size = \"5MiB\"\nmax_file_size = \"1GiB\"\nmax_file_age = \"1h\"\n",
        ceph.keys("lake/big", SK)
    );
    let gw = tmp.path().join("multipart");
    std::fs::create_dir_all(&gw).unwrap();
    std::fs::write(gw.join("pipeline.toml"), toml).unwrap();
    let child = start(&gw);
    wait_for("every line", Duration::from_secs(120), || {
        ceph.committed("big", &local) >= lines
    });
    stop(child); // rolls the open file: one object with every line
    ceph.mirror("lake", "big/", &local);
    let files = committed_files(&local.join("big"), "copy");
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(local.join("big").join(&files[0])).unwrap();
    assert!(text.len() > 10 << 20, "{} bytes: not multipart", text.len());
    let cfg: sluice_generator::GeneratorConfig = serde_json::from_value(serde_json::json!({
        "kind": "words", "words_per_line": 1000, "rate": 4000, "count": lines
    }))
    .unwrap();
    let want: Vec<String> = sluice_generator::Workload::new(&cfg)
        .take(lines as usize)
        .into_iter()
        .map(|l| format!("{{\"line\":\"{l}\"}}"))
        .collect();
    let got: Vec<&str> = text.lines().collect();
    let first_difference = got.iter().zip(&want).position(|(g, w)| g != w);
    assert!(
        got.len() == want.len() && first_difference.is_none(),
        "the multipart object differs from the generated lines: {} lines for {}, first difference at {first_difference:?}",
        got.len(),
        want.len()
    );

    // SIGKILLs while writing per-batch and rolled objects.
    let seed = seed();
    let n = kills(5);
    eprintln!("ceph: seed {seed}, {n} kills");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let toml = format!(
        "\n[sinks.batches]\ntype = \"object_store\"\n{}format = \"json\"\n\n[sinks.rolled]\ntype = \"object_store\"\n{}format = \"parquet\"\nmax_file_size = \"40KiB\"\nmax_file_age = \"2s\"\npartition_by = [\"site\"]\n\n[sinks.out]\ntype = \"file\"\npath = \"out\"\n",
        ceph.keys("lake/batches", SK),
        ceph.keys("lake/rolled", SK)
    );
    let gw = tmp.path().join("crash");
    std::fs::create_dir_all(&gw).unwrap();
    let count = 6000;
    std::fs::write(
        gw.join("pipeline.toml"),
        pipeline("ceph-crash", count, 1000, &toml),
    )
    .unwrap();
    // First a kill certainly between a batch's plan and its commit (a local file sink beside the
    // two RGW sinks stops on a FIFO).
    crate::crash::kill_mid_batch(&gw, 100, || {});
    for _ in 0..n {
        let mut child = start(&gw);
        std::thread::sleep(Duration::from_millis(rng.random_range(500..1500)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let child = start(&gw);
    wait_for("every record", Duration::from_secs(180), || {
        ceph.committed("batches", &local) >= count && ceph.committed("rolled", &local) >= count
    });
    stop(child);
    crate::crash::assert_rerun(&gw);
    for sink in ["batches", "rolled"] {
        let _ = std::fs::remove_dir_all(local.join(sink));
        ceph.mirror("lake", &format!("{sink}/"), &local);
        assert_exactly_once(
            sink,
            &generated(count, 1000),
            &committed_rows(&local.join(sink), "copy"),
        );
    }

    // Errors: RGW's answers for a wrong secret and a missing bucket, one line each.
    let sink = |keys: String| {
        pipeline(
            "ceph-errors",
            100,
            1000,
            &format!("\n[sinks.out]\ntype = \"object_store\"\n{keys}"),
        )
    };
    let err = run_expecting_failure(&tmp.path().join("e1"), &sink(ceph.keys("lake/x", "nope")));
    assert!(
        err.contains("sink `out`") && err.contains("access denied"),
        "{err}"
    );
    assert!(err.contains(&ceph.endpoint()), "{err}");
    let err = run_expecting_failure(&tmp.path().join("e2"), &sink(ceph.keys("missing/x", SK)));
    assert!(
        err.contains("bucket `missing`") && err.contains("does not exist"),
        "{err}"
    );
}
