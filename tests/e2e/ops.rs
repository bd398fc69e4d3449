//! Each DStream operation of the seeds in its declarative form, with exact output on small,
//! deterministic input (the `queue` source: one listed batch per batch interval).

use crate::common::{blocks, rows, run_toml};

fn app(body: &str) -> String {
    format!(
        "[app]\nname = \"t\"\nbatch_interval = \"1s\"\n\n[sinks.out]\ntype = \"console\"\n\n{body}"
    )
}

const WORDS: &str = r#"
[sources.lines]
type = "queue"
batches = [["to be or", "not to be"], ["be quick"]]
"#;

#[tokio::test]
async fn flat_map_map_reduce_by_key_is_the_word_count() {
    let cfg = app(&format!(
        "{WORDS}\n[jobs.counts]\nsinks = [\"out\"]\nsql = \"\"\"
SELECT word, count(*) AS n FROM (SELECT unnest(string_to_array(line, ' ')) AS word FROM lines)
GROUP BY word ORDER BY n DESC, word\"\"\""
    ));
    let (out, _) = run_toml(&cfg, 3).await;
    assert_eq!(
        blocks(&out),
        vec![
            vec!["('be', 2)", "('to', 2)", "('not', 1)", "('or', 1)"],
            vec!["('be', 1)", "('quick', 1)"],
            vec![],
        ]
    );
}

#[tokio::test]
async fn console_prints_pprint_layout_with_header_and_ellipsis() {
    let cfg = app(r#"
[sources.nums]
type = "queue"
batches = [["1","2","3","4","5","6","7","8","9","10","11","12"]]

[jobs.all]
sql = "SELECT CAST(line AS BIGINT) AS n FROM nums ORDER BY n"
sinks = ["out"]
"#);
    let (out, _) = run_toml(&cfg, 2).await;
    let time = sluice::BatchTime(crate::common::T0).to_local_string();
    let next = sluice::BatchTime(crate::common::T0 + 1000).to_local_string();
    let rule = "-------------------------------------------";
    let expected = format!(
        "{rule}\nTime: {time}\n{rule}\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n...\n\n{rule}\nTime: {next}\n{rule}\n\n"
    );
    assert_eq!(out, expected);
}

#[tokio::test]
async fn map_filter_and_map_values() {
    let cfg = app(r#"
[sources.kv]
type = "queue"
format = "csv"
schema = "k string, v bigint"
batches = [["a,1", "b,2", "c,3", "d,4"]]

[jobs.mapped]
sql = "SELECT k, v * 10 AS v FROM kv WHERE v % 2 = 0 ORDER BY k"
sinks = ["out"]
"#);
    let (out, _) = run_toml(&cfg, 1).await;
    assert_eq!(rows(&out), vec!["('b', 20)", "('d', 40)"]);
}

#[tokio::test]
async fn sample_is_seeded_and_deterministic() {
    let lines: Vec<String> = (0..200).map(|i| format!("\"r{i}\"")).collect();
    let cfg = |fraction: &str, seed: u32| {
        app(&format!(
            "[sources.s]\ntype = \"queue\"\nbatches = [[{}]]\n\n[jobs.sampled]\nsql = \"SELECT line FROM s WHERE sample({fraction}, {seed}, line) ORDER BY line\"\nsinks = [\"out\"]\n[sinks.out.num]\n",
            lines.join(",")
        ))
        .replace("[sinks.out.num]\n", "")
        .replace("type = \"console\"", "type = \"console\"\nnum = 1000")
    };
    let (a, _) = run_toml(&cfg("0.3", 7), 1).await;
    let (b, _) = run_toml(&cfg("0.3", 7), 1).await;
    let (c, _) = run_toml(&cfg("0.3", 8), 1).await;
    let n = rows(&a).len();
    assert_eq!(a, b, "same seed, same sample");
    assert_ne!(rows(&a), rows(&c), "another seed, another sample");
    assert!((30..=90).contains(&n), "about 30% of 200 rows, got {n}");
    assert_eq!(rows(&run_toml(&cfg("0.0", 7), 1).await.0).len(), 0);
    assert_eq!(rows(&run_toml(&cfg("1.0", 7), 1).await.0).len(), 200);
}

#[tokio::test]
async fn repartition_changes_parallelism_not_results() {
    let body = |p: usize| {
        app(&format!(
            "{WORDS}\n[jobs.counts]\npartitions = {p}\nsinks = [\"out\"]\nsql = \"SELECT word, count(*) AS n FROM (SELECT unnest(string_to_array(line, ' ')) AS word FROM lines) GROUP BY word ORDER BY word\""
        ))
    };
    let (one, _) = run_toml(&body(1), 2).await;
    let (four, _) = run_toml(&body(4), 2).await;
    assert_eq!(one, four);
    assert_eq!(rows(&one).len(), 6);
}

const TWO_STREAMS: &str = r#"
[sources.left]
type = "queue"
format = "csv"
schema = "k string, v bigint"
batches = [["a,1", "b,2", "b,3"]]

[sources.right]
type = "queue"
format = "csv"
schema = "k string, w string"
batches = [["b,x", "c,y"]]
"#;

async fn two(sql: &str) -> Vec<String> {
    let cfg = app(&format!(
        "{TWO_STREAMS}\n[jobs.j]\nsinks = [\"out\"]\nsql = \"\"\"{sql}\"\"\""
    ));
    rows(&run_toml(&cfg, 1).await.0)
}

#[tokio::test]
async fn union_of_two_streams() {
    assert_eq!(
        two("SELECT k FROM left UNION ALL SELECT k FROM right ORDER BY k").await,
        vec!["a", "b", "b", "b", "c"]
    );
}

#[tokio::test]
async fn count_reduce_and_count_by_value() {
    assert_eq!(two("SELECT count(*) AS n FROM left").await, vec!["3"]);
    assert_eq!(two("SELECT sum(v) AS total FROM left").await, vec!["6"]);
    assert_eq!(
        two("SELECT k, count(*) AS n FROM left GROUP BY k ORDER BY k").await,
        vec!["('a', 1)", "('b', 2)"]
    );
}

#[tokio::test]
async fn group_by_key_collects_values() {
    assert_eq!(
        two("SELECT k, array_agg(v ORDER BY v) AS vs FROM left GROUP BY k ORDER BY k").await,
        vec!["('a', [1])", "('b', [2, 3])"]
    );
}

#[tokio::test]
async fn joins_inner_left_right_full() {
    let q = |kind: &str| {
        format!(
            "SELECT l.k AS lk, l.v, r.k AS rk, r.w FROM left l {kind} JOIN right r ON l.k = r.k ORDER BY l.k NULLS LAST, l.v, r.k"
        )
    };
    assert_eq!(
        two(&q("INNER")).await,
        vec!["('b', 2, 'b', 'x')", "('b', 3, 'b', 'x')"]
    );
    assert_eq!(
        two(&q("LEFT")).await,
        vec![
            "('a', 1, None, None)",
            "('b', 2, 'b', 'x')",
            "('b', 3, 'b', 'x')"
        ]
    );
    assert_eq!(
        two(&q("RIGHT")).await,
        vec![
            "('b', 2, 'b', 'x')",
            "('b', 3, 'b', 'x')",
            "(None, None, 'c', 'y')"
        ]
    );
    assert_eq!(
        two(&q("FULL")).await,
        vec![
            "('a', 1, None, None)",
            "('b', 2, 'b', 'x')",
            "('b', 3, 'b', 'x')",
            "(None, None, 'c', 'y')"
        ]
    );
}

#[tokio::test]
async fn cogroup_and_cartesian() {
    assert_eq!(
        two("SELECT coalesce(a.k, b.k) AS k, a.vs, b.ws FROM
               (SELECT k, array_agg(v ORDER BY v) AS vs FROM left GROUP BY k) a
               FULL JOIN (SELECT k, array_agg(w ORDER BY w) AS ws FROM right GROUP BY k) b ON a.k = b.k
             ORDER BY 1")
        .await,
        vec!["('a', [1], None)", "('b', [2, 3], [x])", "('c', None, [y])"]
    );
    assert_eq!(
        two("SELECT l.v, r.w FROM left l CROSS JOIN right r ORDER BY l.v, r.w").await,
        vec!["(1, 'x')", "(1, 'y')", "(2, 'x')", "(2, 'y')", "(3, 'x')", "(3, 'y')"]
    );
}

#[tokio::test]
async fn sort_and_lookup() {
    assert_eq!(
        two("SELECT k, v FROM left ORDER BY v DESC").await,
        vec!["('b', 3)", "('b', 2)", "('a', 1)"]
    );
    assert_eq!(
        two("SELECT v FROM left WHERE k = 'b' ORDER BY v").await,
        vec!["2", "3"]
    );
}

#[tokio::test]
async fn transform_joins_a_reference_table_reloaded_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("owners.csv");
    std::fs::write(&csv, "device,owner\nd1,alice\n").unwrap();
    let cfg = app(&format!(
        r#"
[sources.events]
type = "queue"
repeat = true
batches = [["d1"]]

[tables.owners]
path = "{}"

[jobs.enriched]
sql = "SELECT e.line AS device, o.owner FROM events e JOIN owners o ON e.line = o.device"
sinks = ["out"]
"#,
        csv.display()
    ));
    let buf = sluice_console::SharedBuffer::default();
    let mut reg = sluice::registry();
    reg.register_sink(
        "console",
        sluice_console::ConsoleConnector::capture(buf.clone()),
    );
    let path = std::path::Path::new("t.toml");
    let parsed = sluice_config::load_str(&cfg, config::FileFormat::Toml, path, &reg).unwrap();
    let p = sluice::build(parsed, path, &reg).await.unwrap();
    let shutdown = sluice::Shutdown::default();
    let opts = sluice::RunOptions {
        manual_clock: Some(sluice::BatchTime(crate::common::T0)),
        shutdown: shutdown.clone(),
        ..Default::default()
    };
    let run = tokio::spawn(p.run(opts));
    // Wait until the old owner has been printed, then change the file (with a modification time
    // that differs whatever the file system's granularity).
    let limit = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !buf.text().contains("('d1', 'alice')") {
        assert!(
            std::time::Instant::now() < limit,
            "the first batch never printed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    std::fs::write(&csv, "device,owner\nd1,bob\n").unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&csv)
        .unwrap()
        .set_modified(later)
        .unwrap();
    while !buf.text().contains("('d1', 'bob')") {
        assert!(std::time::Instant::now() < limit, "the reload never showed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    shutdown.trigger();
    run.await.unwrap().unwrap();
    let printed = rows(&buf.text());
    let first_bob = printed.iter().position(|r| r == "('d1', 'bob')").unwrap();
    assert!(first_bob > 0);
    assert!(printed[..first_bob].iter().all(|r| r == "('d1', 'alice')"));
    assert!(
        printed[first_bob..].iter().all(|r| r == "('d1', 'bob')"),
        "no alice after the reload"
    );
}

#[tokio::test]
async fn a_job_reads_another_jobs_output() {
    let cfg = app(&format!(
        "{WORDS}
[jobs.words]
sql = \"SELECT unnest(string_to_array(line, ' ')) AS word FROM lines\"
[jobs.long_words]
sql = \"SELECT word FROM words WHERE length(word) > 2 ORDER BY word\"
sinks = [\"out\"]"
    ));
    let (out, _) = run_toml(&cfg, 2).await;
    assert_eq!(blocks(&out), vec![vec!["not"], vec!["quick"]]);
}

#[tokio::test]
async fn the_streaming_context_builder_runs_the_word_count_on_the_same_engine() {
    let dir = tempfile::tempdir().unwrap();
    let ssc = sluice::StreamingContext::new("wordcount", std::time::Duration::from_secs(1));
    ssc.with_options(sluice::RunOptions {
        max_batches: Some(2),
        manual_clock: Some(sluice::BatchTime(crate::common::T0)),
        ..Default::default()
    });
    ssc.queue_stream(vec![
        vec!["to be or".into(), "not to be".into()],
        vec!["be".into()],
    ])
    .flat_map("unnest(string_to_array(line, ' ')) AS word")
    .map("word, 1 AS n")
    .reduce_by_key("word", "sum(n) AS n")
    .transform("SELECT * FROM {} ORDER BY word")
    .sink(
        "file",
        serde_json::json!({ "path": dir.path().to_str().unwrap(), "prefix": "counts" }),
    );
    ssc.start().await.unwrap();
    let summary = ssc.await_termination().await.unwrap();
    assert_eq!(summary.batches, 2);
    let read =
        |t: i64| std::fs::read_to_string(dir.path().join(format!("counts-{t}.json"))).unwrap();
    assert_eq!(
        read(crate::common::T0),
        "{\"word\":\"be\",\"n\":2}\n{\"word\":\"not\",\"n\":1}\n{\"word\":\"or\",\"n\":1}\n{\"word\":\"to\",\"n\":2}\n"
    );
    assert_eq!(
        read(crate::common::T0 + 1000),
        "{\"word\":\"be\",\"n\":1}\n"
    );
}

#[test]
fn the_generator_is_deterministic_for_a_seed() {
    use sluice_generator::{GeneratorConfig, Workload};
    let cfg = |kind: &str, seed: u64| -> GeneratorConfig {
        let v = serde_json::json!({ "kind": kind, "seed": seed, "rate": 100, "start_ms": 1_700_000_000_000i64 });
        sluice_core::options::parse("sources.g", v).unwrap()
    };
    for kind in ["sensors", "weblog", "words"] {
        let a = Workload::new(&cfg(kind, 1)).take(500);
        assert_eq!(
            a,
            Workload::new(&cfg(kind, 1)).take(500),
            "{kind}: same seed, same records"
        );
        assert_ne!(
            a,
            Workload::new(&cfg(kind, 2)).take(500),
            "{kind}: another seed, other records"
        );
    }
    let first = &Workload::new(&cfg("sensors", 1)).take(1)[0];
    let v: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(v["ts"], 1_700_000_000_000i64);
    for key in ["device", "site", "temperature", "humidity"] {
        assert!(v.get(key).is_some(), "{key} in {first}");
    }
    let words = Workload::new(&cfg("words", 1)).take(10);
    assert!(words.iter().all(|l| l.split(' ').count() == 10));
}
