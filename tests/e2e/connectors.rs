//! The real `sluice` binary with real peers: a TCP server for the socket source, real directories for
//! the file source and sink, and every example config in `configs/`.

use crate::common::{repo, sluice, terminate, wait_for};
use sluice_testkit::output::json_rows;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

/// Spawn a thread that reads a child's stdout into a shared string.
fn capture(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut out = child.stdout.take().unwrap();
    let t = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            t.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Sum the `('word', n)` rows printed by pprint.
fn printed_counts(console: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in console.lines().filter(|l| l.starts_with("('")) {
        let (w, n) = l
            .trim_start_matches("('")
            .trim_end_matches(')')
            .split_once("', ")
            .unwrap();
        *m.entry(w.to_string()).or_default() += n.parse::<u64>().unwrap();
    }
    m
}

#[test]
fn wordcount_config_counts_every_line_from_a_real_socket_peer_and_reconnects() {
    // A free port with nothing listening yet: the source must retry until the peer appears.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = sluice()
        .arg("run")
        .arg(repo().join("configs/wordcount-socket.toml"))
        .env("SLUICE__SOURCES__LINES__PORT", port.to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = capture(&mut child);
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // The receiver reports that it is retrying.
    let retrying = rx
        .recv_timeout(Duration::from_secs(60))
        .into_iter()
        .chain(rx.iter())
        .find(|l| l.contains("retrying"));
    assert!(retrying.is_some_and(|l| l.contains(&port.to_string())));
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..3000u64 {
        let line = format!("w{} w{} hello", i % 7, i % 3);
        for w in line.split(' ') {
            *expected.entry(w.to_string()).or_default() += 1;
        }
        writeln!(peer, "{line}").unwrap();
    }
    peer.flush().unwrap();
    wait_for("every line to be counted", Duration::from_secs(60), || {
        printed_counts(&stdout.lock().unwrap()) == expected
    });
    // The peer goes away after an unterminated line and comes back: the source reconnects, and
    // that last line counts on its own, not glued to the next connection's first line.
    write!(peer, "tail").unwrap();
    drop(peer);
    let (mut peer, _) = listener.accept().unwrap();
    writeln!(peer, "again again").unwrap();
    peer.flush().unwrap();
    expected.insert("tail".into(), 1);
    expected.insert("again".into(), 2);
    wait_for("lines after the reconnect", Duration::from_secs(60), || {
        printed_counts(&stdout.lock().unwrap()) == expected
    });
    let status = terminate(&mut child);
    assert!(status.success(), "graceful stop exits 0, got {status:?}");
    let console = stdout.lock().unwrap().clone();
    assert!(
        console.starts_with("-------------------------------------------\nTime: "),
        "{console}"
    );
    // Every batch block ends with a blank line, and no batch shows more than 10 rows.
    for block in console.split("Time: ").skip(1) {
        let rows = block.lines().filter(|l| l.starts_with("('")).count();
        assert!(rows <= 10, "{block}");
    }
}

fn move_in(dir: &Path, name: &str, text: &str) {
    let staging = dir.parent().unwrap().join(format!("staging-{name}"));
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, dir.join(name)).unwrap();
}

#[test]
fn file_source_reads_each_new_file_once_and_file_sinks_write_whole_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let out = dir.path().join("out");
    let cfg = dir.path().join("files.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[app]
name = "files"
batch_interval = "200ms"
dead_letter = "rejected"

[sources.readings]
type = "file"
path = "{input}"
format = "json"
schema = "id bigint, device string, temperature double"
include_existing = true

[jobs.hot]
sql = "SELECT id, device, temperature FROM readings WHERE temperature > 20"
sinks = ["json_out", "parquet_out", "csv_out"]

[sinks.json_out]
type = "file"
path = "{out}/json"
format = "json"

[sinks.parquet_out]
type = "file"
path = "{out}/parquet"
format = "parquet"
partition_by = ["device"]

[sinks.csv_out]
type = "file"
path = "{out}/csv"
format = "csv"

[sinks.rejected]
type = "file"
path = "{out}/dlq"
"#,
            input = input.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let record = |i: u64| {
        format!(
            r#"{{"id":{i},"device":"d{}","temperature":{}}}"#,
            i % 3,
            15 + (i % 10)
        )
    };
    let file = |from: u64| {
        (from..from + 100)
            .map(record)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    };
    move_in(&input, "a.json", &file(0));
    let mut child = sluice()
        .arg("run")
        .arg(&cfg)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    move_in(&input, "b.json", &file(100));
    move_in(&input, ".hidden.json", &file(1000));
    move_in(&input, "c.json", &(file(200) + "this is not json\n"));
    let expected: Vec<u64> = (0..300).filter(|i| 15 + (i % 10) > 20).collect();
    wait_for("all hot readings", Duration::from_secs(60), || {
        json_rows(&out.join("json")).len() >= expected.len()
    });
    wait_for("the rejected line", Duration::from_secs(60), || {
        !json_rows(&out.join("dlq")).is_empty()
    });
    assert!(terminate(&mut child).success());

    let mut ids: Vec<u64> = json_rows(&out.join("json"))
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids, expected,
        "each record exactly once, none from the hidden file"
    );
    let dlq = json_rows(&out.join("dlq"));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["payload"], "this is not json");
    assert_eq!(dlq[0]["origin"], "readings");
    // Parquet partitions hold the same rows.
    let mut parquet_rows = 0;
    for d in ["d0", "d1", "d2"] {
        for e in std::fs::read_dir(out.join("parquet").join(format!("device={d}")))
            .unwrap()
            .flatten()
        {
            let f = std::fs::File::open(e.path()).unwrap();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap()
                .build()
                .unwrap();
            parquet_rows += reader.map(|b| b.unwrap().num_rows()).sum::<usize>();
        }
    }
    assert_eq!(parquet_rows, expected.len());
    // CSV files have a header row and the same rows.
    let mut csv_rows = 0;
    let mut csv_files = 0;
    for e in std::fs::read_dir(out.join("csv"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
    {
        csv_files += 1;
        let text = std::fs::read_to_string(e.path()).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("id,device,temperature"));
        csv_rows += lines.count();
    }
    assert_eq!(csv_rows, expected.len());
    // The manifest lists each committed file, with its rows.
    let manifest = crate::crash::committed(&out.join("csv"));
    assert_eq!(
        manifest.iter().map(|m| m.files.len()).sum::<usize>(),
        csv_files
    );
    assert_eq!(
        manifest.iter().map(|m| m.rows as usize).sum::<usize>(),
        expected.len()
    );
    // No temporary file is left behind.
    let leftovers = std::fs::read_dir(out.join("json"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn every_example_config_validates() {
    let dir = repo().join("configs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml" || x == "yaml") {
            let out = sluice()
                .current_dir(repo())
                .arg("validate")
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 2);
}

/// `sluice config schema` is a JSON Schema every example config satisfies, read by an independent
/// validator (Python's `jsonschema`, draft 2020-12); and it refuses a misspelt key, a source of
/// an unknown type and a wrong value type.
#[test]
fn every_example_config_satisfies_the_printed_json_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let out = sluice_testkit::succeed(sluice().args(["config", "schema"]));
    std::fs::write(tmp.path().join("schema.json"), &out.stdout).unwrap();
    let script = r#"
import glob, json, sys, tomllib, jsonschema
v = jsonschema.Draft202012Validator(json.load(open(sys.argv[1])))
jsonschema.Draft202012Validator.check_schema(v.schema)
base = {"app": {"name": "x", "batch_interval": "1s"}}
def errors(cfg):
    return list(v.iter_errors(cfg))
n = 0
for f in sorted(glob.glob(sys.argv[2] + "/*.toml")):
    found = errors(tomllib.load(open(f, "rb")))
    assert not found, (f, [e.message for e in found])
    n += 1
assert n >= 2, n
good = {"type": "socket", "host": "h", "port": 9}
assert not errors({**base, "sources": {"s": good}})
for bad in [{**good, "fromat": "json"}, {**good, "type": "sockets"}, {**good, "port": "nine"}]:
    assert errors({**base, "sources": {"s": bad}}), bad
print(n)
"#;
    let python = sluice_testkit::tools_dir().join("python-venv/bin/python");
    let out = sluice_testkit::succeed(
        std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(tmp.path().join("schema.json"))
            .arg(repo().join("configs")),
    );
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(n >= 2);
}
