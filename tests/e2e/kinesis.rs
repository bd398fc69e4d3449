//! The `kinesis` source and sink against real Kinesis peers on loopback — kinesis-local
//! (kinesis-mock: resharding, closed shards that end) and kinesalite (fast) — with boto3 as the
//! independent producer and reader, and aws-kinesis-agg making KPL aggregates sluice did not write.

use crate::crash::{
    assert_exactly_once, committed, committed_count, committed_rows, kills, log_of, seed, start,
    stop, wait_for_log,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use sluice_testkit::kinesis::{Kinesis, Peer};
use sluice_testkit::signal;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A pipeline reading stream `stream` of `peer` into job `copy` (a JSON file sink `out`), with
/// dead letters in `rejected`.
fn pipeline(peer: &Kinesis, stream: &str, source_extra: &str, sql: &str) -> String {
    format!(
        r#"
[app]
name = "kinesis-test"
batch_interval = "200ms"
checkpoint_dir = "checkpoint"
dead_letter = "rejected"

[sources.events]
type = "kinesis"
stream = "{stream}"
endpoint = "{}"
access_key_id = "test"
secret_access_key = "test"
idle_wait = "100ms"
shard_refresh = "1s"
{source_extra}

[jobs.copy]
sql = '''{sql}'''
sinks = ["out"]

[sinks.out]
type = "file"
path = "out"
format = "json"

[sinks.rejected]
type = "file"
path = "rejected"
format = "json"
"#,
        peer.endpoint()
    )
}

/// `key<TAB>{"n": i}` lines for i in `from..to`, keys `k<i % keys>`.
fn numbered(from: usize, to: usize, keys: usize) -> String {
    (from..to)
        .map(|i| format!("k{}\t{{\"n\": {i}}}\n", i % keys))
        .collect()
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap()
}

/// `<tmp>/gw` holding `pipeline.toml`.
fn gateway_dir(tmp: &Path, toml: &str) -> std::path::PathBuf {
    let gw = tmp.join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    std::fs::write(gw.join("pipeline.toml"), toml).unwrap();
    gw
}

fn setup(peer: Peer) -> (tempfile::TempDir, Kinesis) {
    let tmp = tempfile::tempdir().unwrap();
    let k = Kinesis::start(peer, &tmp.path().join("peer")).expect("start the Kinesis peer");
    (tmp, k)
}

#[test]
fn kinesis_source_survives_20_sigkills_exactly_once() {
    let seed = seed();
    eprintln!("kinesis crash test: seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (tmp, k) = setup(Peer::KinesisLocal);
    let total = 4_000;
    k.client(&["create", "numbers", "4"], None);
    k.client(&["put", "numbers"], Some(&numbered(0, total / 2, 97)));
    let gw = tmp.path().join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    // 4 shards × 30 records a batch of 200 ms: the run lasts ~7 s, so the kills land mid-stream.
    let toml = pipeline(
        &k,
        "numbers",
        "start = \"trim_horizon\"\nformat = \"json\"\nschema = \"n bigint\"\nmax_records_per_shard = 30",
        "SELECT n FROM events",
    );
    std::fs::write(gw.join("pipeline.toml"), toml).unwrap();
    crate::crash::kill_mid_batch(&gw, 200, || {});
    let mut child = Some(start(&gw));
    let n = kills(20);
    for i in 0..n {
        if i == n / 2 {
            k.client(&["put", "numbers"], Some(&numbered(total / 2, total, 97)));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(150..900)));
        let mut c = child.take().unwrap_or_else(|| start(&gw));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        child = Some(start(&gw));
    }
    if n < 2 {
        k.client(&["put", "numbers"], Some(&numbered(total / 2, total, 97)));
    }
    let out = gw.join("out");
    wait_for_log(&gw, "every record", Duration::from_secs(120), || {
        committed_count(&out, "copy") >= total as u64
    });
    std::thread::sleep(Duration::from_millis(600));
    stop(child.take().unwrap());
    crate::crash::assert_rerun(&gw);
    let rows = committed_rows(&out, "copy");
    let expected: Vec<String> = (0..total).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_exactly_once(
        &format!("kinesis source after {n} SIGKILLs"),
        &expected,
        &rows,
    );
    let again = log_of(&gw)
        .matches("kinesis: reading a planned range again")
        .count();
    eprintln!("planned ranges read again after a restart: {again}");
    assert!(again >= 1, "no planned range was read again");
}

/// A split and then a merge while the gateway reads a backlog slowly: every record arrives once,
/// and for each partition key, every record of a batch comes after every record of the batches
/// before it — a child shard is read only once its parents were read to their end.
#[test]
fn kinesis_split_and_merge_during_a_run_keep_each_keys_order() {
    let (tmp, k) = setup(Peer::KinesisLocal);
    k.client(&["create", "clicks", "2"], None);
    let keys = 8;
    // `{"k": key, "c": round}` for each key in each round.
    let rounds = |from: usize, to: usize| -> String {
        (from..to)
            .flat_map(|r| {
                (0..keys).map(move |key| format!("u{key}\t{{\"k\": \"u{key}\", \"c\": {r}}}\n"))
            })
            .collect()
    };
    k.client(&["put", "clicks"], Some(&rounds(0, 40)));
    let gw = gateway_dir(tmp.path(), &pipeline(
            &k,
            "clicks",
            "start = \"trim_horizon\"\nformat = \"json\"\nschema = \"k string, c bigint\"\nmax_records_per_shard = 8",
            "SELECT k, c, shard_id FROM events",
        ));
    let child = start(&gw);
    let out = gw.join("out");
    wait_for_log(&gw, "the first rows", Duration::from_secs(30), || {
        committed_count(&out, "copy") > 0
    });
    k.client(&["split", "clicks", "shardId-000000000000"], None);
    k.client(&["put", "clicks"], Some(&rounds(40, 80)));
    // The upper child of shard 0 and shard 1 are adjacent.
    k.client(
        &[
            "merge",
            "clicks",
            "shardId-000000000003",
            "shardId-000000000001",
        ],
        None,
    );
    k.client(&["put", "clicks"], Some(&rounds(80, 120)));
    let total = (120 * keys) as u64;
    wait_for_log(&gw, "every record", Duration::from_secs(120), || {
        committed_count(&out, "copy") >= total
    });
    std::thread::sleep(Duration::from_millis(600));
    stop(child);
    // Per key, the rounds of each batch in batch order.
    let mut batches: BTreeMap<String, Vec<(i64, Vec<i64>)>> = BTreeMap::new();
    let mut shards = std::collections::BTreeSet::new();
    let mut count = 0;
    for e in committed(&out).into_iter().filter(|e| e.job == "copy") {
        let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for f in &e.files {
            for line in std::fs::read_to_string(out.join(&f.key)).unwrap().lines() {
                let v = json(line);
                shards.insert(v["shard_id"].as_str().unwrap().to_string());
                per_key
                    .entry(v["k"].as_str().unwrap().to_string())
                    .or_default()
                    .push(v["c"].as_i64().unwrap());
                count += 1;
            }
        }
        for (key, cs) in per_key {
            batches.entry(key).or_default().push((e.batch_time, cs));
        }
    }
    assert_eq!(count, total, "every record once");
    assert!(shards.len() >= 5, "the children were read: {shards:?}");
    for (key, bs) in &batches {
        let mut all: Vec<i64> = bs.iter().flat_map(|b| b.1.clone()).collect();
        all.sort();
        assert_eq!(
            all,
            (0..120).collect::<Vec<i64>>(),
            "key {key}: every round once"
        );
        for w in bs.windows(2) {
            let before = w[0].1.iter().max().unwrap();
            let after = w[1].1.iter().min().unwrap();
            assert!(
                before < after,
                "key {key}: round {after} in batch {} but round {before} in the batch before",
                w[1].0
            );
        }
    }
    let log = log_of(&gw);
    assert!(log.contains("kinesis: shard read to its end"), "{log}");
}

/// KPL aggregates written by aws-kinesis-agg become their user records, with their own partition
/// keys and sub-sequence numbers; a bad aggregate and an undecodable record go to the dead letters.
#[test]
fn kinesis_kpl_aggregates_are_deaggregated_and_bad_records_are_dead_letters() {
    let (tmp, k) = setup(Peer::Kinesalite);
    k.client(&["create", "agg", "1"], None);
    k.client(&["put-agg", "agg", "10"], Some(&numbered(0, 300, 7)));
    // Framed as an aggregate, but its checksum is wrong.
    let mut bad = vec![0xF3u8, 0x89, 0x9A, 0xC2];
    bad.extend_from_slice(b"not a protobuf");
    bad.extend_from_slice(&[0u8; 16]);
    k.client_bytes(&["put-raw", "agg", "bad"], Some(&bad));
    k.client(&["put", "agg"], Some("odd\tnot json\n"));
    let gw = gateway_dir(
        tmp.path(),
        &pipeline(
            &k,
            "agg",
            "start = \"trim_horizon\"\nformat = \"json\"\nschema = \"n bigint\"",
            "SELECT n, partition_key, sequence_number, sub_sequence_number FROM events",
        ),
    );
    let child = start(&gw);
    let out = gw.join("out");
    wait_for_log(&gw, "300 rows", Duration::from_secs(60), || {
        committed_count(&out, "copy") >= 300
            && committed_count(&gw.join("rejected"), "dead_letter") >= 2
    });
    std::thread::sleep(Duration::from_millis(600));
    stop(child);
    let rows: Vec<Value> = committed_rows(&out, "copy")
        .iter()
        .map(|l| json(l))
        .collect();
    assert_eq!(rows.len(), 300);
    let mut per_seq: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &rows {
        let n = r["n"].as_i64().unwrap();
        assert_eq!(r["partition_key"], format!("k{}", n % 7), "{r}");
        per_seq
            .entry(r["sequence_number"].as_str().unwrap().to_string())
            .or_default()
            .push(r["sub_sequence_number"].as_i64().unwrap());
    }
    assert_eq!(per_seq.len(), 30, "30 aggregates of 10");
    for subs in per_seq.values_mut() {
        subs.sort();
        assert_eq!(*subs, (0..10).collect::<Vec<i64>>());
    }
    let mut ns: Vec<i64> = rows.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    ns.sort();
    assert_eq!(ns, (0..300).collect::<Vec<i64>>());
    let dead = committed_rows(&gw.join("rejected"), "dead_letter").join("\n");
    assert!(dead.contains("MD5"), "{dead}");
    assert!(dead.contains("not json"), "{dead}");
}

/// `start = "latest"` is fixed at the first start: what was there before is not read, what arrives
/// while the gateway is down is. (kinesis-local: kinesalite never answers an `AT_TIMESTAMP`
/// GetShardIterator.)
#[test]
fn kinesis_latest_is_fixed_at_the_first_start_and_records_put_while_down_are_read() {
    let (tmp, k) = setup(Peer::KinesisLocal);
    k.client(&["create", "live", "2"], None);
    k.client(&["put", "live"], Some(&numbered(0, 10, 3)));
    let gw = gateway_dir(
        tmp.path(),
        &pipeline(
            &k,
            "live",
            "format = \"json\"\nschema = \"n bigint\"",
            "SELECT n FROM events",
        ),
    );
    let child = start(&gw);
    wait_for_log(&gw, "the shards", Duration::from_secs(30), || {
        log_of(&gw).matches("kinesis: reading a shard").count() >= 2
    });
    k.client(&["put", "live"], Some(&numbered(10, 20, 3)));
    let out = gw.join("out");
    wait_for_log(&gw, "10 rows", Duration::from_secs(30), || {
        committed_count(&out, "copy") >= 10
    });
    stop(child);
    k.client(&["put", "live"], Some(&numbered(20, 30, 3)));
    let child = start(&gw);
    wait_for_log(&gw, "20 rows", Duration::from_secs(30), || {
        committed_count(&out, "copy") >= 20
    });
    std::thread::sleep(Duration::from_millis(600));
    stop(child);
    let expected: Vec<String> = (10..30).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_exactly_once(
        "kinesis latest across a stop",
        &expected,
        &committed_rows(&out, "copy"),
    );
}

/// Rows into a Kinesis sink with a templated partition key, read back by boto3; `validate` states
/// the path's at-least-once guarantee.
#[test]
fn kinesis_sink_puts_rows_that_boto3_reads_back() {
    let (tmp, k) = setup(Peer::Kinesalite);
    k.client(&["create", "in", "2"], None);
    k.client(&["create", "alerts", "3"], None);
    k.client(&["put", "in"], Some(&numbered(0, 1200, 5)));
    let gw = tmp.path().join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    let toml = format!(
        r#"
[app]
name = "kinesis-sink"
batch_interval = "200ms"
checkpoint_dir = "checkpoint"

[sources.events]
type = "kinesis"
stream = "in"
endpoint = "{e}"
access_key_id = "test"
secret_access_key = "test"
start = "trim_horizon"
format = "json"
schema = "n bigint"

[jobs.alerts]
sql = "SELECT n, partition_key AS device FROM events WHERE n % 2 = 0"
sinks = ["alerts"]

[sinks.alerts]
type = "kinesis"
stream = "alerts"
endpoint = "{e}"
access_key_id = "test"
secret_access_key = "test"
partition_key = "device-{{device}}"
"#,
        e = k.endpoint()
    );
    std::fs::write(gw.join("pipeline.toml"), &toml).unwrap();
    let v = crate::common::validate(&gw.join("pipeline.toml"));
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(said.contains("at-least-once"), "{said}");
    let child = start(&gw);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        got = k
            .client(&["read", "alerts"], None)
            .lines()
            .map(json)
            .collect::<Vec<_>>();
        if got.len() >= 600 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    stop(child);
    assert_eq!(got.len(), 600, "{}", log_of(&gw));
    let mut ns = Vec::new();
    for r in &got {
        let row = json(r["data"].as_str().unwrap());
        let n = row["n"].as_i64().unwrap();
        assert_eq!(r["key"], format!("device-k{}", n % 5), "{r}");
        assert_eq!(row["device"], format!("k{}", n % 5));
        ns.push(n);
    }
    ns.sort();
    assert_eq!(ns, (0..1200).step_by(2).collect::<Vec<i64>>());
    let shards: std::collections::BTreeSet<&str> =
        got.iter().map(|r| r["shard"].as_str().unwrap()).collect();
    assert!(shards.len() >= 2, "five keys over three shards: {shards:?}");
}

/// A stream that does not exist stops the gateway at start, naming it; so does a sink's.
#[test]
fn kinesis_a_missing_stream_is_a_clear_error_at_start() {
    let (tmp, k) = setup(Peer::Kinesalite);
    let (code, log) = crate::common::run_in(
        tmp.path(),
        &pipeline(&k, "nope", "format = \"text\"", "SELECT data FROM events"),
        "3s",
    );
    assert_ne!(code, Some(0));
    assert!(
        log.contains("stream `nope`") && log.contains("does not exist"),
        "{log}"
    );
    assert!(
        !log.contains("source `events`: source `events`"),
        "named once: {log}"
    );
    k.client(&["create", "there", "1"], None);
    let toml = pipeline(&k, "there", "format = \"text\"", "SELECT data FROM events").replace(
        "[sinks.out]\ntype = \"file\"\npath = \"out\"\nformat = \"json\"",
        &format!(
            "[sinks.out]\ntype = \"kinesis\"\nstream = \"gone\"\nendpoint = \"{}\"\naccess_key_id = \"a\"\nsecret_access_key = \"b\"",
            k.endpoint()
        ),
    );
    let (code, log) = crate::common::run_in(tmp.path(), &toml, "3s");
    assert_ne!(code, Some(0));
    assert!(
        log.contains("stream `gone`") && log.contains("does not exist"),
        "{log}"
    );
    assert!(!log.contains("secret_access_key = \"b\""));
    // No credentials anywhere in the chain (none set, no profile, no instance metadata).
    let toml = pipeline(&k, "there", "format = \"text\"", "SELECT data FROM events").replace(
        "access_key_id = \"test\"\nsecret_access_key = \"test\"\n",
        "",
    );
    std::fs::write(tmp.path().join("pipeline.toml"), toml).unwrap();
    let out = crate::common::sluice()
        .current_dir(tmp.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", tmp.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", tmp.path().join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["run", "pipeline.toml", "--duration", "3s"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("credentials"), "{log}");
}

/// `--until-caught-up` reads what is there and exits by itself; `sluice replay --from --to` reads
/// exactly the records that arrived in that time range, into outputs of its own.
#[test]
fn kinesis_until_caught_up_and_a_replay_of_a_time_range() {
    let (tmp, k) = setup(Peer::KinesisLocal);
    k.client(&["create", "events", "2"], None);
    k.client(&["put", "events"], Some(&numbered(0, 100, 5)));
    std::thread::sleep(Duration::from_millis(1100));
    let t1 = sluice_core::time::now_ms();
    k.client(&["put", "events"], Some(&numbered(100, 250, 5)));
    let t2 = sluice_core::time::now_ms();
    std::thread::sleep(Duration::from_millis(1100));
    k.client(&["put", "events"], Some(&numbered(250, 300, 5)));
    let toml = pipeline(
        &k,
        "events",
        "start = \"trim_horizon\"\nformat = \"json\"\nschema = \"n bigint\"",
        "SELECT n FROM events",
    );
    let run = |dir: &Path, args: &[&str]| -> String {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("pipeline.toml"), &toml).unwrap();
        let out = crate::common::sluice()
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .args(args)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{log}");
        log
    };
    let ns = |out: &Path| -> Vec<i64> {
        let mut n: Vec<i64> = committed_rows(out, "copy")
            .iter()
            .map(|l| json(l)["n"].as_i64().unwrap())
            .collect();
        n.sort();
        n
    };
    let dir = tmp.path().join("caught-up");
    let log = run(&dir, &["run", "pipeline.toml", "--until-caught-up"]);
    assert!(
        log.contains("every source has reached the end of its bounded run"),
        "{log}"
    );
    assert_eq!(ns(&dir.join("out")), (0..300).collect::<Vec<_>>());

    let dir = tmp.path().join("replay");
    let log = run(
        &dir,
        &[
            "replay",
            "pipeline.toml",
            "--from",
            &t1.to_string(),
            "--to",
            &t2.to_string(),
        ],
    );
    assert!(log.contains("replay done: 150 records"), "{log}");
    let replayed: Vec<_> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("replay-"))
        .map(|e| e.path())
        .collect();
    assert_eq!(replayed.len(), 1);
    assert_eq!(ns(&replayed[0]), (100..250).collect::<Vec<_>>());
}

#[test]
fn kinesis_clickstream_example_writes_page_minutes_as_parquet_and_puts_slow_views_on_a_stream() {
    let (tmp, k) = setup(Peer::KinesisLocal);
    k.client(&["create", "clicks", "2"], None);
    k.client(&["create", "click-alerts", "1"], None);
    let gw = tmp.path().join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    let config = crate::common::repo().join("configs/kinesis-clickstream.toml");
    let log = std::fs::File::create(gw.join("gateway.log")).unwrap();
    let child = crate::common::sluice()
        .current_dir(&gw)
        .env("RUST_LOG", "info")
        .env("SLUICE__SOURCES__CLICKS__ENDPOINT", k.endpoint())
        .env("SLUICE__SINKS__ALERTS__ENDPOINT", k.endpoint())
        .arg("run")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_log(&gw, "the shards", Duration::from_secs(30), || {
        log_of(&gw).matches("kinesis: reading a shard").count() >= 2
    });
    // Minute 0: 30 views of /home by 6 users and 10 of /cart by 2, one of them slow; a bad record;
    // then a view at minute 2 moves the watermark past minute 0.
    let mut lines = String::new();
    for i in 0..40 {
        let (page, user) = if i < 30 {
            ("/home", i % 6)
        } else {
            ("/cart", i % 2)
        };
        let load = if i == 35 { 5000 } else { 100 + i };
        lines.push_str(&format!(
            "u-{user}\t{{\"ts\": \"2026-11-22T13:00:{i:02}\", \"user\": \"u-{user}\", \"page\": \"{page}\", \"load_ms\": {load}}}\n"
        ));
    }
    lines.push_str("u-9\tnot a click\n");
    k.client(&["put", "clicks"], Some(&lines));
    std::thread::sleep(Duration::from_millis(2500));
    k.client(
        &["put", "clicks"],
        Some("u-1\t{\"ts\": \"2026-11-22T13:02:15\", \"user\": \"u-1\", \"page\": \"/home\", \"load_ms\": 90}\n"),
    );
    let pages = gw.join("out/kinesis-clickstream/pages");
    wait_for_log(&gw, "the minute's counts", Duration::from_secs(30), || {
        committed_count(&pages, "pages") >= 2
    });
    let mut alerts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while alerts.is_empty() && Instant::now() < deadline {
        alerts = k
            .client(&["read", "click-alerts"], None)
            .lines()
            .map(json)
            .collect();
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(child);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["key"], "u-1");
    let alert = json(alerts[0]["data"].as_str().unwrap());
    assert_eq!(alert["page"], "/cart");
    assert_eq!(alert["load_ms"], 5000);
    let mut minutes = BTreeMap::new();
    for e in committed(&pages) {
        for f in e.files {
            let file = std::fs::File::open(pages.join(f.key)).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
            for b in reader {
                use sluice_core::arrow::array::AsArray;
                use sluice_core::arrow::datatypes::Int64Type;
                let b = b.unwrap();
                let page = b.column_by_name("page").unwrap().as_string::<i32>().clone();
                let views = b
                    .column_by_name("views")
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .clone();
                let users = b
                    .column_by_name("users")
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .clone();
                for r in 0..b.num_rows() {
                    minutes.insert(
                        page.value(r).to_string(),
                        serde_json::json!({"views": views.value(r), "users": users.value(r)}),
                    );
                }
            }
        }
    }
    assert_eq!(minutes["/home"]["views"], 30, "{minutes:?}");
    assert_eq!(minutes["/home"]["users"], 6);
    assert_eq!(minutes["/cart"]["views"], 10);
    assert_eq!(minutes["/cart"]["users"], 2);
    let dead = committed_rows(&gw.join("out/kinesis-clickstream/rejected"), "dead_letter");
    assert_eq!(dead.len(), 1, "{dead:?}");
}

/// A batch planned over 4 shards with backlogs larger than `prefetch_mib`, re-run after a kill:
/// reading one shard's range again must not be starved by the readers of the others filling the
/// budget.
#[test]
fn kinesis_rerun_of_a_batch_over_4_shards_with_backlogs_past_prefetch_makes_progress() {
    let (tmp, k) = setup(Peer::Kinesalite);
    k.client(&["create", "big", "4"], None);
    let pad = "x".repeat(900);
    let lines: String = (0..4000)
        .map(|i| format!("k{}\t{{\"n\": {i}, \"pad\": \"{pad}\"}}\n", i % 101))
        .collect();
    k.client(&["put", "big"], Some(&lines));
    let gw = gateway_dir(tmp.path(), &pipeline(
            &k,
            "big",
            "start = \"trim_horizon\"\nformat = \"json\"\nschema = \"n bigint\"\nprefetch_mib = 1\nrecords_per_call = 100\nfetch_timeout = \"20s\"",
            "SELECT n FROM events",
        )
        // Batches of 2 s: the readers fill the budget before the first plan, whose ranges then
        // hold about all of it.
        .replace("batch_interval = \"200ms\"", "batch_interval = \"2s\""));
    crate::crash::kill_mid_batch(&gw, 2000, || {});
    let child = start(&gw);
    let out = gw.join("out");
    wait_for_log(&gw, "every record", Duration::from_secs(90), || {
        committed_count(&out, "copy") >= 4000 || log_of(&gw).contains("did not arrive within")
    });
    std::thread::sleep(Duration::from_millis(600));
    stop(child);
    crate::crash::assert_rerun(&gw);
    let expected: Vec<String> = (0..4000).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_exactly_once(
        "a big re-run batch",
        &expected,
        &committed_rows(&out, "copy"),
    );
    let again = log_of(&gw)
        .matches("kinesis: reading a planned range again")
        .count();
    assert!(
        again >= 2,
        "the re-run batch read more than one shard again: {again}"
    );
}

/// The rows of job `copy` over every gateway's own output folder (`out/<instance>/`).
fn scale_out_rows(gw: &Path) -> Vec<String> {
    let Ok(dirs) = std::fs::read_dir(gw.join("out")) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for d in dirs.flatten() {
        if d.path().is_dir() {
            rows.extend(committed_rows(&d.path(), "copy"));
        }
    }
    rows
}

/// Two gateways share a 4-shard stream through a lease table on dynalite: one is SIGKILLed and its
/// shards move to the other once its leases expire; it restarts (finishing its claimed batch) and
/// takes its share back; then the other is frozen (SIGSTOP) past its leases and thawed. Every
/// record is in exactly one gateway's output, once.
#[test]
fn kinesis_two_gateways_share_shards_through_leases_through_a_kill_and_a_freeze() {
    let seed = seed();
    eprintln!("kinesis scale-out test: seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (tmp, k) = setup(Peer::Kinesalite);
    let dynamo = Kinesis::start(Peer::Dynalite, &tmp.path().join("dynalite")).expect("dynalite");
    k.client(&["create", "shared", "4"], None);
    let total = 6_000;
    let third = total / 3;
    k.client(&["put", "shared"], Some(&numbered(0, third, 89)));
    let toml = pipeline(
        &k,
        "shared",
        &format!(
            "start = \"trim_horizon\"\nformat = \"json\"\nschema = \"n bigint\"\nmax_records_per_shard = 15\n\
             lease_duration = \"3s\"\ndynamodb_endpoint = \"{}\"",
            dynamo.endpoint()
        ),
        "SELECT n FROM events",
    )
    .replace("dead_letter = \"rejected\"", "dead_letter = \"rejected\"\nscale_out = true");
    let gws: Vec<_> = ["a", "b"].iter().map(|n| tmp.path().join(n)).collect();
    for gw in &gws {
        std::fs::create_dir_all(gw).unwrap();
        std::fs::write(gw.join("pipeline.toml"), &toml).unwrap();
    }
    let reading = |gw: &Path| log_of(gw).matches("kinesis: reading a shard").count();
    // A is killed certainly between a batch's plan (claimed in the lease table) and its commit:
    // its file sink's next temporary names under out/<instance>/ are FIFOs.
    let shown = crate::common::sluice()
        .current_dir(&gws[0])
        .args(["validate", "pipeline.toml"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    let a_instance = shown
        .split("this gateway is instance `")
        .nth(1)
        .and_then(|s| s.split('`').next())
        .unwrap_or_else(|| panic!("validate names the instance: {shown}"))
        .to_string();
    crate::crash::kill_mid_batch_in(
        &gws[0],
        &gws[0].join("out").join(&a_instance),
        "copy",
        200,
        || {},
    );
    assert!(reading(&gws[0]) >= 4, "{}", log_of(&gws[0]));
    // B starts while A's leases are still live: it takes them once they expire, and reads each
    // shard after A's last claimed range.
    let b = start(&gws[1]);
    k.client(&["put", "shared"], Some(&numbered(third, 2 * third, 89)));
    wait_for_log(
        &gws[1],
        "b takes a's shards",
        Duration::from_secs(30),
        || reading(&gws[1]) >= 4,
    );
    // A comes back, finishes its claimed batch, and takes its share back from B.
    let before = reading(&gws[0]);
    let a = start(&gws[0]);
    wait_for_log(&gws[0], "a's share again", Duration::from_secs(30), || {
        reading(&gws[0]) >= before + 2
    });
    std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
    // B freezes past its leases: A takes them; B thaws, its claims lose, and it drops the shards.
    signal(&b, "STOP");
    k.client(&["put", "shared"], Some(&numbered(2 * third, total, 89)));
    std::thread::sleep(Duration::from_millis(5000));
    signal(&b, "CONT");
    let all = || scale_out_rows(&gws[0]).len() + scale_out_rows(&gws[1]).len();
    wait_for_log(&gws[0], "every record", Duration::from_secs(120), || {
        all() >= total
    });
    std::thread::sleep(Duration::from_millis(1500));
    stop(a);
    stop(b);
    let mut rows = scale_out_rows(&gws[0]);
    let of_a = rows.len();
    rows.extend(scale_out_rows(&gws[1]));
    let expected: Vec<String> = (0..total).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_exactly_once("two gateways sharing a stream", &expected, &rows);
    eprintln!("a wrote {of_a} rows, b {}", rows.len() - of_a);
    assert!(of_a > 0 && rows.len() > of_a, "both gateways wrote a share");
    crate::crash::assert_rerun(&gws[0]);
    let b_log = log_of(&gws[1]);
    assert!(
        b_log.contains("kinesis: no longer reading a shard"),
        "b gave up shards after the freeze"
    );
    eprintln!(
        "b's lost claims after the freeze: {}",
        b_log
            .matches("another gateway claimed the range first")
            .count()
    );
}

/// `sluice replay --from SHARD=SEQ --to SHARD=SEQ` reads exactly that shard's records from the
/// first sequence number up to the second (not included); the shards `--from` does not name
/// contribute nothing.
#[test]
fn kinesis_replay_of_sequence_numbers_reads_exactly_that_range() {
    let (tmp, k) = setup(Peer::Kinesalite);
    k.client(&["create", "seqs", "2"], None);
    k.client(&["put", "seqs"], Some(&numbered(0, 100, 7)));
    let recs: Vec<Value> = k
        .client(&["read", "seqs"], None)
        .lines()
        .map(json)
        .collect();
    assert_eq!(recs.len(), 100);
    let shard = recs[0]["shard"].as_str().unwrap().to_string();
    let mut of_shard: Vec<&Value> = recs
        .iter()
        .filter(|r| r["shard"] == shard.as_str())
        .collect();
    of_shard.sort_by_key(|r| {
        let s = r["seq"].as_str().unwrap();
        (s.len(), s.to_string())
    });
    assert!(of_shard.len() > 20, "{}", of_shard.len());
    let seq = |i: usize| of_shard[i]["seq"].as_str().unwrap().to_string();
    let mut expected: Vec<i64> = of_shard[5..15]
        .iter()
        .map(|r| json(r["data"].as_str().unwrap())["n"].as_i64().unwrap())
        .collect();
    expected.sort();
    let gw = gateway_dir(
        tmp.path(),
        &pipeline(
            &k,
            "seqs",
            "format = \"json\"\nschema = \"n bigint\"",
            "SELECT n FROM events",
        ),
    );
    let out = crate::common::sluice()
        .current_dir(&gw)
        .env("RUST_LOG", "info")
        .args(["replay", "pipeline.toml"])
        .args(["--from", &format!("{shard}={}", seq(5))])
        .args(["--to", &format!("{shard}={}", seq(15))])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(log.contains("replay done: 10 records"), "{log}");
    let replayed: Vec<_> = std::fs::read_dir(gw.join("out"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("replay-"))
        .map(|e| e.path())
        .collect();
    let mut got: Vec<i64> = committed_rows(&replayed[0], "copy")
        .iter()
        .map(|l| json(l)["n"].as_i64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, expected);
}
