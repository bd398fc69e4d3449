//! Processing-time windows, event-time windows with a watermark, keyed state and timeouts.

use crate::common::{blocks, rows, run_toml};

fn app(body: &str) -> String {
    format!(
        "[app]\nname = \"t\"\nbatch_interval = \"1s\"\ndead_letter = \"dlq\"\n\n[sinks.out]\ntype = \"console\"\n[sinks.dlq]\ntype = \"console\"\n\n{body}"
    )
}

/// Batches b0..b4 = [a] [b b] [c] [a] []; window 3s sliding every 2s, so the job runs at b0, b2, b4
/// over (t-3s, t].
async fn windowed(sql: &str) -> Vec<Vec<String>> {
    let cfg = app(&format!(
        r#"
[sources.s]
type = "queue"
batches = [["a"], ["b", "b"], ["c"], ["a"], []]

[jobs.w]
sql = "{sql}"
window = {{ length = "3s", slide = "2s" }}
sinks = ["out"]
"#
    ));
    blocks(&run_toml(&cfg, 5).await.0)
}

#[tokio::test]
async fn window_holds_the_last_length_of_input_every_slide() {
    assert_eq!(
        windowed("SELECT line FROM s ORDER BY line").await,
        vec![vec!["a"], vec!["a", "b", "b", "c"], vec!["a", "c"]]
    );
}

#[tokio::test]
async fn count_by_window_and_reduce_by_window() {
    assert_eq!(
        windowed("SELECT count(*) AS n FROM s").await,
        vec![vec!["1"], vec!["4"], vec!["2"]]
    );
    assert_eq!(
        windowed("SELECT max(line) AS m FROM s").await,
        vec![vec!["a"], vec!["c"], vec!["c"]]
    );
}

#[tokio::test]
async fn reduce_by_key_and_count_by_value_and_window() {
    assert_eq!(
        windowed("SELECT line, count(*) AS n FROM s GROUP BY line ORDER BY line").await,
        vec![
            vec!["('a', 1)"],
            vec!["('a', 1)", "('b', 2)", "('c', 1)"],
            vec!["('a', 1)", "('c', 1)"]
        ]
    );
}

#[tokio::test]
async fn event_time_windows_close_at_the_watermark_and_late_rows_go_to_the_dead_letter_sink() {
    let cfg = app(r#"
[sources.events]
type = "queue"
format = "csv"
schema = "id string, ts bigint"
batches = [["a,1000", "b,12000", "c,3000"], ["d,16000", "e,2000"], ["f,26000", "g,15000"], ["h,9000"]]

[jobs.per_window]
sql = """
SELECT window_start, count(*) AS n, string_agg(id, ',' ORDER BY id) AS ids
FROM events GROUP BY window_start ORDER BY window_start
"""
event_time = { column = "ts", length = "10s", watermark = "5s", late = "dead_letter" }
sinks = ["out"]
"#);
    let (out, summary) = run_toml(&cfg, 4).await;
    let b = blocks(&out);
    // b0: watermark 7s, nothing closes. b1: watermark 11s closes [0s, 10s); `e` (2s) is late.
    // b2: watermark 21s closes [10s, 20s). b3: `h` (9s) is late.
    assert_eq!(b.len(), 4, "{out}");
    assert_eq!(b[0], vec!["('1970-01-01 00:00:00.000', 2, 'a,c')"]);
    assert_eq!(b[1].len(), 1);
    assert!(b[1][0].contains("'per_window', 'late: event time before the watermark (7000 ms)', '{\"id\":\"e\",\"ts\":2000}'"), "{}", b[1][0]);
    assert_eq!(b[2], vec!["('1970-01-01 00:00:10.000', 3, 'b,d,g')"]);
    assert!(b[3][0].contains("\"id\":\"h\""), "{}", b[3][0]);
    assert_eq!(summary.late_records, 2);
    assert_eq!(summary.dead_letters, 2);
}

#[tokio::test]
async fn sliding_event_time_windows_put_a_row_in_each_window_that_holds_it() {
    let cfg = app(r#"
[sources.events]
type = "queue"
format = "json"
schema = "id string, ts timestamp"
batches = [['{"id":"x","ts":7000}'], ['{"id":"y","ts":30000}']]

[jobs.w]
sql = "SELECT window_start, window_end, id FROM events ORDER BY window_start"
event_time = { column = "ts", length = "10s", slide = "5s" }
sinks = ["out"]
"#);
    let (out, _) = run_toml(&cfg, 2).await;
    assert_eq!(
        rows(&out),
        vec![
            "('1970-01-01 00:00:00.000', '1970-01-01 00:00:10.000', 'x')",
            "('1970-01-01 00:00:05.000', '1970-01-01 00:00:15.000', 'x')",
        ]
    );
}

const RUNNING: &str = "SELECT coalesce(s.word, b.word) AS word, coalesce(s.n, 0) + coalesce(b.n, 0) AS n
FROM state s FULL JOIN (SELECT line AS word, count(*) AS n FROM words GROUP BY line) b ON s.word = b.word";

#[tokio::test]
async fn update_state_by_key_keeps_running_counts() {
    let cfg = app(&format!(
        r#"
[sources.words]
type = "queue"
batches = [["a", "b", "a"], ["b"], ["c"], []]

[jobs.totals]
sql = """{RUNNING} ORDER BY word"""
state = {{ key = ["word"], schema = "word string, n bigint" }}
sinks = ["out"]
"#
    ));
    let (out, _) = run_toml(&cfg, 4).await;
    assert_eq!(
        blocks(&out),
        vec![
            vec!["('a', 2)", "('b', 1)"],
            vec!["('a', 2)", "('b', 2)"],
            vec!["('a', 2)", "('b', 2)", "('c', 1)"],
            vec!["('a', 2)", "('b', 2)", "('c', 1)"],
        ]
    );
}

#[tokio::test]
async fn a_key_whose_new_state_is_null_is_removed() {
    let cfg = app(&format!(
        r#"
[sources.words]
type = "queue"
batches = [["a", "a"], ["a", "b"], ["b"]]

[jobs.totals]
sql = """SELECT word, CASE WHEN n >= 3 THEN NULL ELSE n END AS n FROM ({RUNNING}) ORDER BY word"""
state = {{ key = ["word"], schema = "word string, n bigint" }}
sinks = ["out"]
"#
    ));
    let (out, _) = run_toml(&cfg, 3).await;
    assert_eq!(
        blocks(&out),
        vec![vec!["('a', 2)"], vec!["('b', 1)"], vec!["('b', 2)"]]
    );
}

#[tokio::test]
async fn idle_keys_time_out_with_one_final_emission() {
    let cfg = app(&format!(
        r#"
[sources.words]
type = "queue"
batches = [["a", "b"], ["a"], ["a"], [], []]

[jobs.sessions]
sql = """{RUNNING} ORDER BY word"""
state = {{ key = ["word"], schema = "word string, n bigint", timeout = "2s", emit = "updated" }}
sinks = ["out"]
"#
    ));
    let (out, _) = run_toml(&cfg, 5).await;
    assert_eq!(
        blocks(&out),
        vec![
            vec!["('a', 1, False)", "('b', 1, False)"],
            vec!["('a', 2, False)"],
            vec!["('a', 3, False)", "('b', 1, True)"],
            vec![],
            vec!["('a', 3, True)"],
        ]
    );
}

/// `mode = "upsert"`: the query returns only the keys of this batch (Spark's mapWithState).
const UPSERT: &str = "SELECT b.word, coalesce(s.n, 0) + b.n AS n
FROM (SELECT line AS word, count(*) AS n FROM words GROUP BY line) b LEFT JOIN state s ON s.word = b.word";

fn sorted(mut blocks: Vec<Vec<String>>) -> Vec<Vec<String>> {
    for b in &mut blocks {
        b.sort();
    }
    blocks
}

#[tokio::test]
async fn upsert_state_keeps_the_keys_a_batch_does_not_return() {
    let cfg = app(&format!(
        r#"
[sources.words]
type = "queue"
batches = [["a", "b", "a"], ["b"], ["c"], []]

[jobs.totals]
sql = """{UPSERT}"""
state = {{ key = ["word"], schema = "word string, n bigint", mode = "upsert" }}
sinks = ["out"]
"#
    ));
    let (out, _) = run_toml(&cfg, 4).await;
    assert_eq!(
        sorted(blocks(&out)),
        vec![
            vec!["('a', 2)", "('b', 1)"],
            vec!["('a', 2)", "('b', 2)"],
            vec!["('a', 2)", "('b', 2)", "('c', 1)"],
            vec!["('a', 2)", "('b', 2)", "('c', 1)"],
        ]
    );
}

#[tokio::test]
async fn upsert_state_removes_a_key_returned_with_null_values() {
    let cfg = app(&format!(
        r#"
[sources.words]
type = "queue"
batches = [["a", "a"], ["a", "b"], ["b"], ["a"]]

[jobs.totals]
sql = """SELECT word, CASE WHEN n >= 3 THEN NULL ELSE n END AS n FROM ({UPSERT})"""
state = {{ key = ["word"], schema = "word string, n bigint", mode = "upsert" }}
sinks = ["out"]
"#
    ));
    let (out, _) = run_toml(&cfg, 4).await;
    // `a` reaches 3 in the second batch and is removed; it starts again from 1 in the fourth.
    assert_eq!(
        sorted(blocks(&out)),
        vec![
            vec!["('a', 2)"],
            vec!["('b', 1)"],
            vec!["('b', 2)"],
            vec!["('a', 1)", "('b', 2)"],
        ]
    );
}

#[tokio::test]
async fn upsert_state_times_out_keys_not_returned() {
    let cfg = app(&format!(
        r#"
[sources.words]
type = "queue"
batches = [["a", "b"], ["a"], ["a"], [], []]

[jobs.sessions]
sql = """{UPSERT}"""
state = {{ key = ["word"], schema = "word string, n bigint", timeout = "2s", emit = "updated", mode = "upsert" }}
sinks = ["out"]
"#
    ));
    let (out, _) = run_toml(&cfg, 5).await;
    assert_eq!(
        sorted(blocks(&out)),
        vec![
            vec!["('a', 1, False)", "('b', 1, False)"],
            vec!["('a', 2, False)"],
            vec!["('a', 3, False)", "('b', 1, True)"],
            vec![],
            vec!["('a', 3, True)"],
        ]
    );
}

/// Issue 18, defect 5: one record dated year 3000 used to move the watermark there for good (every
/// later row was late), and times near i64's limits overflowed the window arithmetic.
#[tokio::test]
async fn an_event_time_far_in_the_future_is_an_outlier_not_the_new_watermark() {
    let t0 = crate::common::T0;
    let year_3000 = 32_503_680_000_000_i64;
    let cfg = app(&format!(
        r#"
[sources.events]
type = "queue"
format = "csv"
schema = "id string, ts bigint"
batches = [["a,{a}", "z,{year_3000}", "max,{max}", "min,{min}"], ["b,{b}"], ["c,{c}"], ["d,{d}"]]

[jobs.per_window]
sql = "SELECT window_start, count(*) AS n, string_agg(id, ',' ORDER BY id) AS ids FROM events GROUP BY window_start"
event_time = {{ column = "ts", length = "10s", late = "dead_letter" }}
sinks = ["out"]
"#,
        a = t0 - 9_000,
        b = t0 + 1_000,
        c = t0 + 12_000,
        d = t0 + 21_000,
        max = i64::MAX,
        min = i64::MIN,
    ));
    let (out, summary) = run_toml(&cfg, 4).await;
    let b = blocks(&out);
    // b0: the three outliers go to the dead-letter output and the watermark stays at `a`'s time;
    // each later batch closes the window before it, and nothing is late.
    let b0 = b[0].join("\n");
    for id in ["z", "max", "min"] {
        assert!(
            b0.contains(&format!("\"id\":\"{id}\""))
                && b0.contains("future: event time more than max_future"),
            "{id} is an outlier: {out}"
        );
    }
    assert_eq!(summary.late_records, 0, "{out}");
    let windows: Vec<&String> = b
        .iter()
        .flatten()
        .filter(|r| !r.contains("future:"))
        .collect();
    assert_eq!(
        windows
            .iter()
            .map(|r| r.rsplit(", ").next().unwrap())
            .collect::<Vec<_>>(),
        vec!["'a')", "'b')", "'c')"],
        "every window closes once, in order: {out}"
    );
    assert_eq!(summary.dead_letters, 3);
}
