//! Issue 18, "nothing lost at the edges": each test here failed on the code before its fix.
//!
//! - files that arrive between the gateway's first start and its first batch (defect 0);
//! - every rename a commit relies on is followed by a sync of its directory (defect 8);
//! - checkpoint files are the owner's only, and secrets never reach a message (defect 10).

use crate::common::{kill9, sluice, terminate, wait_for};
use crate::crash::start_logged;
use sluice_testkit::output::json_rows;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn move_in(dir: &Path, name: &str, lines: &[String]) {
    let staging = dir.parent().unwrap().join(format!("staging-{name}"));
    std::fs::write(&staging, lines.join("\n") + "\n").unwrap();
    std::fs::rename(&staging, dir.join(name)).unwrap();
}

fn lines(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag} {i}")).collect()
}

/// The `line` column of every row a file sink wrote in `out`, with counts.
fn written(out: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for v in json_rows(out) {
        *m.entry(v["line"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

fn expected(sets: &[&[String]]) -> BTreeMap<String, usize> {
    sets.iter()
        .flat_map(|s| s.iter())
        .map(|l| (l.clone(), 1))
        .collect()
}

fn file_pipeline(interval: &str) -> String {
    format!(
        r#"
[app]
name = "newfiles"
batch_interval = "{interval}"
checkpoint_dir = "ck"

[sources.files]
type = "file"
path = "in"

[jobs.copy]
sql = "SELECT line FROM files"
sinks = ["out"]

[sinks.out]
type = "file"
path = "out"
"#
    )
}

/// Defect 0: "new files only" meant "not there at the first *plan*": a file moved in between the
/// start and the first batch was skipped (250 of 500 lines), and after a SIGKILL before the first
/// batch the snapshot was taken again, skipping everything that arrived meanwhile.
#[test]
fn file_source_new_files_only_means_not_there_when_the_gateway_first_started() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let old = lines("old", 100);
    move_in(&input, "old.txt", &old);
    std::fs::write(dir.path().join("pipeline.toml"), file_pipeline("2s")).unwrap();
    let mut gw = start_logged(dir.path(), "run1.log");
    wait_for("the gateway to start", Duration::from_secs(60), || {
        log(dir.path(), "run1.log").contains("started")
    });
    let a = lines("a", 250);
    move_in(&input, "a.txt", &a);
    std::thread::sleep(Duration::from_secs(2));
    let b = lines("b", 250);
    move_in(&input, "b.txt", &b);
    let out = dir.path().join("out");
    let want = expected(&[&a, &b]);
    wait_for("both files' lines", Duration::from_secs(30), || {
        written(&out).len() >= want.len()
    });
    assert!(terminate(&mut gw).success());
    assert_eq!(written(&out), want, "each new line once, none of old.txt");

    // A SIGKILL before the first batch: what arrives before the restart is new, not "existing".
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    move_in(&input, "old.txt", &old);
    // An hour's interval: the first batch is never planned before the kill.
    std::fs::write(dir.path().join("pipeline.toml"), file_pipeline("1h")).unwrap();
    let mut gw = start_logged(dir.path(), "run1.log");
    wait_for("the gateway to start", Duration::from_secs(60), || {
        log(dir.path(), "run1.log").contains("started")
    });
    kill9(&mut gw);
    let c = lines("c", 300);
    move_in(&input, "c.txt", &c);
    std::fs::write(dir.path().join("pipeline.toml"), file_pipeline("500ms")).unwrap();
    let mut gw = start_logged(dir.path(), "run2.log");
    let out = dir.path().join("out");
    let want = expected(&[&c]);
    wait_for(
        "the lines of the file moved in while the gateway was down",
        Duration::from_secs(30),
        || written(&out).len() >= want.len(),
    );
    assert!(terminate(&mut gw).success());
    assert_eq!(written(&out), want);
    assert!(
        log(dir.path(), "run2.log").contains("continuing from the origin fixed at the first start"),
        "{}",
        log(dir.path(), "run2.log")
    );
}

/// The path strace printed for an fd with `-y` (`7</tmp/x/out>`), or a quoted path argument.
fn quoted(line: &str) -> Vec<String> {
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn synced_dir(line: &str) -> Option<String> {
    let rest = line
        .split_once("fsync(")
        .or_else(|| line.split_once("fdatasync("))?
        .1;
    let (_, path) = rest.split_once('<')?;
    Some(path.split_once('>')?.0.to_string())
}

/// Defect 8: a rename into the output or state folder was not followed by a sync of that folder,
/// so after a power loss the commit could survive while the file it lists vanished.
#[test]
fn every_rename_and_new_folder_a_commit_relies_on_is_followed_by_a_directory_sync() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(
        root.join("pipeline.toml"),
        format!(
            r#"
[app]
name = "power"
batch_interval = "200ms"
checkpoint_dir = "{root}/ck"

[sources.readings]
type = "generator"
kind = "sensors"
rate = 500
format = "json"
schema = "device string, site string, ts timestamp, temperature double, humidity double"

[jobs.totals]
sql = """
SELECT coalesce(s.site, b.site) AS site, coalesce(s.n, 0) + coalesce(b.n, 0) AS n
FROM state s FULL JOIN (SELECT site, count(*) AS n FROM readings GROUP BY site) b ON s.site = b.site
"""
state = {{ key = ["site"], schema = "site string, n bigint" }}
sinks = ["out"]

[sinks.out]
type = "file"
path = "{root}/out"
partition_by = ["site"]
"#,
            root = root.display()
        ),
    )
    .unwrap();
    let trace = root.join("trace.txt");
    let status = std::process::Command::new("strace")
        .current_dir(&root)
        .args(["-f", "-y", "-qq", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=rename,renameat,renameat2,mkdir,mkdirat,fsync,fdatasync",
        ])
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "pipeline.toml", "--batches", "6"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .expect("strace (apt: strace) runs the gateway");
    assert!(status.success());
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let ours = |p: &str| Path::new(p).starts_with(&root);
    let mut renames = 0;
    let mut folders = 0;
    for (i, l) in lines.iter().enumerate() {
        let target = if l.contains("rename") && l.trim_end().ends_with("= 0") {
            quoted(l).get(1).cloned()
        } else if l.contains("mkdir") && l.trim_end().ends_with("= 0") {
            quoted(l).first().cloned()
        } else {
            None
        };
        let Some(target) = target.filter(|t| ours(t)) else {
            continue;
        };
        // RocksDB syncs its own folder (it is not ours to check).
        if Path::new(&target).starts_with(root.join("ck/store")) {
            continue;
        }
        if l.contains("rename") {
            renames += 1;
        } else {
            folders += 1;
        }
        let parent: PathBuf = Path::new(&target).parent().unwrap().to_path_buf();
        assert!(
            lines[i + 1..]
                .iter()
                .any(|m| synced_dir(m).is_some_and(|d| Path::new(&d) == parent)),
            "`{l}` is never followed by a sync of {}",
            parent.display()
        );
    }
    // Data files, manifest entries and state files were renamed in; partition and state
    // folders were created.
    assert!(renames >= 10, "{renames} renames in\n{text}");
    assert!(folders >= 3, "{folders} new folders in\n{text}");
}

/// Defect 10: checkpoint files were created with the umask's permissions though they hold the
/// input in plain text, and a numeric password set from the environment was refused and printed.
#[test]
fn checkpoint_files_are_private_and_secrets_never_reach_a_message() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        r#"
[app]
name = "private"
batch_interval = "100ms"
checkpoint_dir = "ck"

[sources.words]
type = "generator"
kind = "words"
rate = 1000

[jobs.w]
sql = "SELECT count(*) AS n FROM words"
sinks = ["out"]

[sinks.out]
type = "blackhole"
"#,
    )
    .unwrap();
    let out = sluice()
        .current_dir(dir.path())
        .args(["run", "pipeline.toml", "--batches", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut checked = 0;
    let mut stack = vec![dir.path().join("ck")];
    while let Some(p) = stack.pop() {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        if p.is_dir() {
            if p != dir.path().join("ck") {
                assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
            }
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.extension().is_some_and(|e| e == "wal") {
            assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
        }
        checked += 1;
    }
    assert!(checked > 3);

    // A numeric MQTT password from the environment is accepted and never printed.
    let secret = "90210417";
    std::fs::write(
        dir.path().join("mqtt.toml"),
        r#"
[app]
name = "secrets"
batch_interval = "1s"

[sources.m]
type = "mqtt"
host = "127.0.0.1"
port = 1
topics = ["a/#"]
username = "u"

[jobs.w]
sql = "SELECT payload FROM m"
sinks = ["out"]

[sinks.out]
type = "blackhole"
"#,
    )
    .unwrap();
    let out = sluice()
        .current_dir(dir.path())
        .env("SLUICE__SOURCES__M__PASSWORD", secret)
        .env("RUST_LOG", "debug")
        .args(["validate", "mqtt.toml"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(secret), "{text}");
    // A password of the wrong type is refused without showing it.
    let out = sluice()
        .current_dir(dir.path())
        .env("SLUICE__SOURCES__M__PASSWORD", secret)
        .env("SLUICE__SOURCES__M__PORT", secret)
        .args(["validate", "mqtt.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("sources.m.port"), "{text}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(dir.path().join("mqtt.toml"))
            .unwrap()
            .replace(
                "username = \"u\"",
                "username = \"u\"\npassword = [\"hunter2\"]",
            ),
    )
    .unwrap();
    let out = sluice().arg("validate").arg(&bad).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("sources.m.password"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// Defect 3: any error that repeats (a cast in the SQL, a partition value no folder can be named
/// after) stopped the gateway, and the restart re-ran the same plan into the same error for good.
/// Now rows a sink cannot write go to the dead-letter output, a failing batch is named with the
/// way out, and `sluice checkpoint skip` records an auditable skip.
#[test]
fn a_poison_batch_is_named_and_skipped_on_request_and_unwritable_rows_are_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let long = format!("site-{}", "x".repeat(300));
    move_in(
        &input,
        "a.txt",
        &["1".into(), "2".into(), "site-a".into(), long.clone()],
    );
    std::thread::sleep(Duration::from_millis(20));
    move_in(&input, "b.txt", &["oops".into()]);
    std::thread::sleep(Duration::from_millis(20));
    move_in(&input, "c.txt", &["3".into(), "4".into()]);
    std::fs::write(
        dir.path().join("pipeline.toml"),
        r#"
[app]
name = "poison"
batch_interval = "200ms"
checkpoint_dir = "ck"
dead_letter = "rejected"

[sources.files]
type = "file"
path = "in"
include_existing = true
max_files_per_batch = 1

[jobs.nums]
sql = "SELECT CAST(line AS BIGINT) AS n FROM files WHERE line NOT LIKE 'site%'"
sinks = ["out"]

[jobs.sites]
sql = "SELECT line AS site FROM files WHERE line LIKE 'site%'"
sinks = ["bysite"]

[sinks.out]
type = "file"
path = "out"

[sinks.bysite]
type = "file"
path = "bysite"
partition_by = ["site"]

[sinks.rejected]
type = "file"
path = "rejected"
"#,
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = sluice()
            .current_dir(dir.path())
            .args(["run", "pipeline.toml"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The batch holding b.txt fails, named, with the way out; a restart fails the same way.
    let (code, err) = run(&["--duration", "30s"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("job `nums` failed"), "{err}");
    assert!(err.contains("sluice checkpoint skip"), "{err}");
    let batch = err
        .split("batch ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("the batch time")
        .to_string();
    let (code, again) = run(&["--duration", "30s"]);
    assert_eq!(code, Some(1), "{again}");
    assert!(
        again.contains(&format!("batch {batch} ")),
        "the same batch: {again}"
    );

    let skip = sluice()
        .current_dir(dir.path())
        .args(["checkpoint", "skip", "ck", &batch])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&skip.stdout);
    assert!(
        skip.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&skip.stderr)
    );
    assert!(
        said.contains("b.txt"),
        "names the input not processed: {said}"
    );

    let (code, log) = run(&["--duration", "3s"]);
    assert_eq!(code, Some(0), "{log}");
    let mut nums: BTreeMap<String, usize> = BTreeMap::new();
    for v in json_rows(&dir.path().join("out")) {
        *nums.entry(v["n"].to_string()).or_default() += 1;
    }
    assert_eq!(
        nums,
        ["1", "2", "3", "4"]
            .map(|n| (n.to_string(), 1))
            .into_iter()
            .collect(),
        "every row of a.txt and c.txt once; b.txt skipped"
    );
    assert!(dir.path().join("bysite/site=site-a").is_dir());
    let rejected = json_rows(&dir.path().join("rejected"));
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("305 bytes"),
        "{rejected:?}"
    );
    assert!(rejected[0]["payload"].as_str().unwrap().contains(&long));
    let inspect = sluice()
        .current_dir(dir.path())
        .args(["checkpoint", "inspect", "ck"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        report.contains(&format!("skipped batch {batch}")),
        "{report}"
    );
    assert!(report.contains("b.txt"), "{report}");
}

/// Also in issue 18: a socket line longer than the read buffer had its first MiB dead-lettered
/// and the rest ingested as a record. The whole line is one dead letter now.
#[test]
fn a_socket_line_longer_than_the_buffer_is_one_dead_letter_and_nothing_else() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        format!(
            r#"
[app]
name = "longline"
batch_interval = "200ms"
dead_letter = "rejected"

[sources.lines]
type = "socket"
host = "127.0.0.1"
port = {port}

[jobs.copy]
sql = "SELECT line FROM lines"
sinks = ["out"]

[sinks.out]
type = "file"
path = "out"

[sinks.rejected]
type = "file"
path = "rejected"
"#
        ),
    )
    .unwrap();
    let mut gw = start_logged(dir.path(), "run.log");
    let (mut peer, _) = listener.accept().unwrap();
    let long = vec![b'x'; 3 << 20];
    peer.write_all(b"before\n").unwrap();
    peer.write_all(&long).unwrap();
    peer.write_all(b"\nafter\n").unwrap();
    peer.flush().unwrap();
    let out = dir.path().join("out");
    wait_for("the two short lines", Duration::from_secs(30), || {
        written(&out).len() >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    drop(peer);
    assert!(terminate(&mut gw).success());
    assert_eq!(
        written(&out),
        [("after".to_string(), 1), ("before".to_string(), 1)]
            .into_iter()
            .collect(),
        "no part of the long line is a record"
    );
    let letters = json_rows(&dir.path().join("rejected"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("({} bytes", 3 << 20)),
        "{}",
        letters[0]["reason"]
    );
}

fn socket_csv(port: u16, schema: &str, interval: &str) -> String {
    format!(
        r#"
[app]
name = "reorder"
batch_interval = "{interval}"
checkpoint_dir = "ck"

[sources.lines]
type = "socket"
host = "127.0.0.1"
port = {port}
format = "csv"
schema = "{schema}"

[jobs.copy]
sql = "SELECT a, b FROM lines"
sinks = ["out"]

[sinks.out]
type = "file"
path = "out"
"#
    )
}

/// Also in issue 18: blocks in the write-ahead log, received under the old schema, were cast
/// into a changed schema by position (here a string into a bigint: the batch failed at every
/// restart). They are matched by name.
#[test]
fn wal_blocks_received_before_a_schema_change_are_read_by_column_name() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = dir.path().join("pipeline.toml");
    std::fs::write(&cfg, socket_csv(port, "a bigint, b string", "1h")).unwrap();
    let mut gw = start_logged(dir.path(), "run1.log");
    let (mut peer, _) = listener.accept().unwrap();
    peer.write_all(b"1,x\n2,y\n").unwrap();
    peer.flush().unwrap();
    let wal = dir.path().join("ck/wal/lines");
    wait_for(
        "the lines in the write-ahead log",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(&wal).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
            })
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    kill9(&mut gw);
    drop(peer);
    // The schema's columns change order; the blocks in the log keep theirs.
    std::fs::write(&cfg, socket_csv(port, "b string, a bigint", "200ms")).unwrap();
    let mut gw = start_logged(dir.path(), "run2.log");
    let (mut peer, _) = listener.accept().unwrap();
    peer.write_all(b"z,3\n").unwrap();
    peer.flush().unwrap();
    let out = dir.path().join("out");
    let rows = || -> Vec<(i64, String)> {
        let mut v: Vec<(i64, String)> = json_rows(&out)
            .iter()
            .map(|r| {
                (
                    r["a"].as_i64().unwrap_or(-1),
                    r["b"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    wait_for("three rows", Duration::from_secs(30), || rows().len() >= 3);
    drop(peer);
    assert!(
        terminate(&mut gw).success(),
        "{}",
        log(dir.path(), "run2.log")
    );
    assert_eq!(
        rows(),
        vec![
            (1, "x".to_string()),
            (2, "y".to_string()),
            (3, "z".to_string())
        ]
    );
}

/// A SIGTERM that arrives while the gateway is still starting (here: loading a large reference
/// table) is a graceful stop like any other: the gateway finishes starting, stops, and exits 0 —
/// it is not killed by the signal's default action.
#[test]
fn a_sigterm_while_the_gateway_is_starting_is_a_graceful_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let table = dir.join("devices.csv");
    let mut csv = String::from("device,site,model,owner\n");
    for i in 0..400_000 {
        csv.push_str(&format!(
            "dev-{i},site-{},model-{},owner-{}\n",
            i % 97,
            i % 13,
            i % 1009
        ));
    }
    std::fs::write(&table, csv).unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"
[app]
name = "early-term"
batch_interval = "200ms"

[sources.readings]
type = "generator"
kind = "sensors"
rate = 100

[tables.devices]
path = "devices.csv"

[jobs.joined]
sql = "SELECT d.site FROM readings r JOIN devices d ON r.line = d.device"
sinks = ["out"]

[sinks.out]
type = "blackhole"
"#,
    )
    .unwrap();
    let mut child = sluice()
        .current_dir(dir)
        .args(["run", "pipeline.toml"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The gateway is starting: it has the table open.
    let fds = format!("/proc/{}/fd", child.id());
    wait_for(
        "the gateway to read the table",
        Duration::from_secs(60),
        || {
            std::fs::read_dir(&fds)
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == table))
        },
    );
    let status = terminate(&mut child);
    assert!(
        status.success(),
        "a SIGTERM during start-up ended the gateway with {status}"
    );
}
