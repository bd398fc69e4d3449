//! Broken configs: `sluice validate` (and `sluice run`) exit 2 with the file, the key path, what was
//! expected and what was found.

use crate::common::{sluice, validate};
use std::path::Path;

const BASE: &str = r#"
[app]
name = "t"
batch_interval = "1s"

[sources.lines]
type = "socket"
host = "127.0.0.1"
port = 9

[jobs.counts]
sql = "SELECT line FROM lines"
sinks = ["out"]

[sinks.out]
type = "console"
"#;

fn with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

fn check_file(name: &str, file: &Path, expect: &[&str], env: &[(&str, &str)]) {
    let mut cmd = sluice();
    cmd.arg("validate").arg(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "case {name}: exit code; stderr:\n{err}"
    );
    assert!(
        err.contains(&file.display().to_string()),
        "case {name}: names the file:\n{err}"
    );
    for e in expect {
        assert!(err.contains(e), "case {name}: expected `{e}` in:\n{err}");
    }
}

fn check(name: &str, toml: &str, expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.toml"));
    std::fs::write(&file, toml).unwrap();
    check_file(name, &file, expect, &[]);
}

#[test]
fn bad_configs_are_rejected_with_file_key_expectation_and_finding() {
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("unknown_top_key", format!("{BASE}\n[srcs.x]\ntype = \"socket\"\n"), vec!["key `srcs`", "unknown key `srcs`", "did you mean `sources`?"]),
        ("missing_app", BASE.replace("[app]\nname = \"t\"\nbatch_interval = \"1s\"\n", ""), vec!["key `app`", "this key is required", "found nothing"]),
        ("bad_duration", with("\"1s\"", "\"fast\""), vec!["key `app.batch_interval`", "a duration such as", "\"fast\""]),
        ("duration_number", with("\"1s\"", "5"), vec!["key `app.batch_interval`", "a duration such as", "5"]),
        ("zero_interval", with("\"1s\"", "\"0s\""), vec!["key `app.batch_interval`", "greater than zero"]),
        ("typo_app_key", with("batch_interval", "batch_intervl"), vec!["app.batch_intervl", "did you mean `batch_interval`?"]),
        ("missing_type", with("type = \"socket\"\n", ""), vec!["key `sources.lines.type`", "one of", "\"socket\"", "found nothing"]),
        ("unknown_type", with("type = \"socket\"", "type = \"sockt\""), vec!["key `sources.lines.type`", "found \"sockt\"", "did you mean \"socket\"?"]),
        ("port_string", with("port = 9", "port = \"abc\""), vec!["key `sources.lines.port`", "an integer from 0 to 65535", "string \"abc\""]),
        ("port_range", with("port = 9", "port = 70000"), vec!["key `sources.lines.port`", "an integer from 0 to 65535", "70000"]),
        ("typo_port", with("port = 9", "prot = 9"), vec!["key `sources.lines.prot`", "unknown key `prot`", "did you mean `port`?"]),
        ("bad_format", with("port = 9", "port = 9\nformat = \"xml\""), vec!["key `sources.lines.format`", "`text`, `json`, `csv`", "\"xml\""]),
        ("json_without_schema", with("port = 9", "port = 9\nformat = \"json\""), vec!["key `sources.lines.schema`", "a schema for format \"json\"", "found nothing"]),
        ("schema_bad_type", with("port = 9", "port = 9\nformat = \"csv\"\nschema = \"a strng\""), vec!["key `sources.lines.schema`", "unknown type `strng`"]),
        ("unknown_sink_ref", with("sinks = [\"out\"]", "sinks = [\"oot\"]"), vec!["key `jobs.counts.sinks[0]`", "the name of a sink", "\"oot\"", "did you mean \"out\"?"]),
        ("empty_sql", with("sql = \"SELECT line FROM lines\"", "sql = \" \""), vec!["key `jobs.counts.sql`", "a SQL query", "an empty string"]),
        ("unknown_table", with("FROM lines", "FROM lnes"), vec!["key `jobs.counts.sql`", "a query reading `lnes`, which is not defined", "did you mean `lines`?"]),
        ("sql_unknown_column", with("SELECT line", "SELECT lyne"), vec!["key `jobs.counts.sql`", "the SQL of job `counts` does not plan", "lyne"]),
        ("sql_syntax", with("SELECT line FROM", "SELEC line FROM"), vec!["the SQL of job `counts` does not plan", "SELEC"]),
        ("window_not_multiple", with("sinks = [\"out\"]", "sinks = [\"out\"]\nwindow = { length = \"2500ms\" }"), vec!["key `jobs.counts.window.length`", "a multiple of app.batch_interval (1s)", "\"2s 500ms\""]),
        ("slide_not_multiple", with("sinks = [\"out\"]", "sinks = [\"out\"]\nwindow = { length = \"4s\", slide = \"1500ms\" }"), vec!["key `jobs.counts.window.slide`", "a multiple of app.batch_interval"]),
        ("slide_longer", with("sinks = [\"out\"]", "sinks = [\"out\"]\nwindow = { length = \"2s\", slide = \"4s\" }"), vec!["key `jobs.counts.window.slide`", "no longer than the window length (2s)", "\"4s\""]),
        ("window_and_event_time", with("sinks = [\"out\"]", "sinks = [\"out\"]\nwindow = { length = \"2s\" }\nevent_time = { column = \"line\", length = \"1m\" }"), vec!["key `jobs.counts.window`", "not both"]),
        ("event_time_column", with("sinks = [\"out\"]", "sinks = [\"out\"]\nevent_time = { column = \"ts\", length = \"1m\" }"), vec!["key `jobs.counts.event_time.column`", "a column of `lines` (line)", "\"ts\""]),
        ("event_time_type", with("sinks = [\"out\"]", "sinks = [\"out\"]\nevent_time = { column = \"line\", length = \"1m\" }"), vec!["key `jobs.counts.event_time.column`", "timestamp or int64", "of type Utf8"]),
        ("late_without_dlq", with("sinks = [\"out\"]", "sinks = [\"out\"]\nevent_time = { column = \"line\", length = \"1m\", late = \"dead_letter\" }"), vec!["key `jobs.counts.event_time.late`", "set app.dead_letter"]),
        ("state_key", with("sinks = [\"out\"]", "sinks = [\"out\"]\nstate = { key = [\"lin\"], schema = \"line string\" }"), vec!["key `jobs.counts.state.key[0]`", "a column of state.schema (line)", "did you mean \"line\"?"]),
        ("state_columns", with("sinks = [\"out\"]", "sinks = [\"out\"]\nstate = { key = [\"line\"], schema = \"line string, n bigint\" }"), vec!["key `jobs.counts.sql`", "the 2 column(s) of state.schema", "1 column(s)"]),
        ("dead_letter_ref", with("batch_interval = \"1s\"", "batch_interval = \"1s\"\ndead_letter = \"dlq\""), vec!["key `app.dead_letter`", "the name of a sink", "\"dlq\""]),
        ("uppercase_name", BASE.replace("lines", "Lines"), vec!["key `sources.Lines`", "lowercase letters", "\"Lines\""]),
        ("duplicate_name", format!("{BASE}\n[tables.lines]\npath = \"x.csv\"\n"), vec!["key `tables.lines`", "not used by another source", "already defined in [sources]"]),
        ("missing_table_file", format!("{BASE}\n[tables.devices]\npath = \"no/such/devices.csv\"\n"), vec!["key `tables.devices.path`", "a readable file", "does not exist"]),
        ("generator_rate", with("type = \"socket\"\nhost = \"127.0.0.1\"\nport = 9", "type = \"generator\"\nkind = \"sensors\"\nrate = 0"), vec!["key `sources.lines.rate`", "at least 1", "found 0"]),
        ("generator_kind", with("type = \"socket\"\nhost = \"127.0.0.1\"\nport = 9", "type = \"generator\"\nkind = \"sensor\""), vec!["key `sources.lines.kind`", "\"sensor\"", "did you mean \"sensors\"?"]),
        ("job_cycle", format!("{BASE}\n[jobs.a]\nsql = \"SELECT * FROM b\"\n[jobs.b]\nsql = \"SELECT * FROM a\"\n"), vec!["a cycle among jobs a, b"]),
        ("sink_format", with("type = \"console\"", "type = \"file\"\npath = \"out\"\nformat = \"xlsx\""), vec!["key `sinks.out.format`", "`json`, `csv`, `parquet`, `avro`", "\"xlsx\""]),
        ("console_num", with("type = \"console\"", "type = \"console\"\nnum = -1"), vec!["key `sinks.out.num`", "a non-negative integer", "-1"]),
        ("no_jobs", BASE.replace("[jobs.counts]\nsql = \"SELECT line FROM lines\"\nsinks = [\"out\"]\n", ""), vec!["key `jobs`", "at least one job"]),
        ("toml_syntax", format!("{BASE}\n[jobs.x\n"), vec!["the file does not parse"]),
        // Issue 18, defect 4: writers that would overwrite each other's files.
        ("prefix_two_jobs", format!("{}\n[jobs.more]\nsql = \"SELECT line FROM lines\"\nsinks = [\"out\"]\n", with("type = \"console\"", "type = \"file\"\npath = \"out\"\nprefix = \"p\"")), vec!["key `sinks.out.prefix`", "written by one job only", "written by job `counts` and job `more`", "remove `prefix`"]),
        ("prefix_and_dead_letter", with("type = \"console\"", "type = \"file\"\npath = \"out\"\nprefix = \"p\"").replace("batch_interval = \"1s\"", "batch_interval = \"1s\"\ndead_letter = \"out\""), vec!["key `sinks.out.prefix`", "written by job `counts` and the dead-letter output (app.dead_letter)"]),
        ("job_named_dead_letter", BASE.replace("[jobs.counts]", "[jobs.dead_letter]"), vec!["key `jobs.dead_letter`", "a job name other than `dead_letter`"]),
    ];
    assert!(cases.len() >= 25);
    for (name, toml, expect) in &cases {
        check(name, toml, expect);
    }
}

#[test]
fn yaml_configs_are_checked_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "app:\n  name: t\n  batch_interval: 1s\nsources:\n  lines:\n    type: socket\n    host: 127.0.0.1\n    port: nine\njobs:\n  counts:\n    sql: SELECT line FROM lines\n",
    )
    .unwrap();
    check_file(
        "yaml",
        &file,
        &["key `sources.lines.port`", "string \"nine\""],
        &[],
    );
}

#[test]
fn environment_overrides_are_applied_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.toml");
    std::fs::write(&file, BASE).unwrap();
    assert!(validate(&file).status.success());
    check_file(
        "env",
        &file,
        &["key `sources.lines.port`", "string \"abc\""],
        &[("SLUICE__SOURCES__LINES__PORT", "abc")],
    );
}

#[test]
fn wrong_file_kind_and_run_exit_2_as_well() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("pipeline.ini");
    std::fs::write(&ini, BASE).unwrap();
    check_file(
        "ini",
        &ini,
        &["expected a .toml, .yaml or .yml file, found a .ini file"],
        &[],
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, with("port = 9", "prot = 9")).unwrap();
    let out = sluice().arg("run").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `port`?"));
}

#[test]
fn bad_kafka_configs_name_the_key() {
    let kafka = |source: &str| {
        with(
            "type = \"socket\"\nhost = \"127.0.0.1\"\nport = 9",
            &format!("type = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9\"\n{source}"),
        )
    };
    check(
        "kafka_misspelt",
        &kafka("topis = [\"a\"]"),
        &["sources.lines.topis", "unknown key `topis`", "topics"],
    );
    check(
        "kafka_no_topics",
        &kafka(""),
        &[
            "sources.lines.topics",
            "exactly one of `topics`, `topic_pattern` and `assign`",
        ],
    );
    check(
        "kafka_start",
        &kafka("topics = [\"a\"]\nstart = \"yesterday\""),
        &["sources.lines.start", "RFC 3339", "\"yesterday\""],
    );
    check(
        "kafka_owned_property",
        &kafka("topics = [\"a\"]\nproperties = { \"group.id\" = \"x\" }"),
        &["sources.lines.properties.\"group.id\"", "set `group_id`"],
    );
    check(
        "scale_out_without_checkpoint",
        &with("[app]\n", "[app]\nscale_out = true\n"),
        &["app.scale_out", "checkpoint_dir"],
    );
    check(
        "kafka_scale_out_assign",
        &kafka("assign = { a = [0] }").replace(
            "[app]\n",
            "[app]\nscale_out = true\ncheckpoint_dir = \"ck\"\n",
        ),
        &["sources.lines.assign", "the group divides the partitions"],
    );
    check(
        "kafka_envelope_clash",
        &kafka("topics = [\"a\"]\nformat = \"json\"\nschema = \"offset bigint\""),
        &["sources.lines.schema", "envelope", "a column `offset`"],
    );
    check(
        "kafka_sink_without_topic",
        &with(
            "[sinks.out]\ntype = \"console\"",
            "[sinks.out]\ntype = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9\"",
        ),
        &["sinks.out", "topic"],
    );
}
