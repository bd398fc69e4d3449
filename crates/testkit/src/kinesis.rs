//! Kinesis peers on loopback ports of their own: kinesis-local (kinesis-mock; resharding with
//! ChildShards and closed shards that end, MillisBehindLatest) and kinesalite (fast), both npm
//! packages `scripts/deps.sh --tests` installs under `$SLUICE_TOOLS/node` with dynalite (DynamoDB,
//! for lease tables); and boto3, through
//! tests/services/kinesis_client.py, as the independent producer and reader.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running Kinesis peer; stopped when dropped.
pub struct Kinesis {
    child: Child,
    pub port: u16,
}

impl Drop for Kinesis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    KinesisLocal,
    Kinesalite,
    /// dynalite: DynamoDB, for the lease table of gateways sharing a stream.
    Dynalite,
}

impl Kinesis {
    /// Start `peer` in `dir` (its log and, for kinesalite, its LevelDB store).
    pub fn start(peer: Peer, dir: &Path) -> anyhow::Result<Kinesis> {
        std::fs::create_dir_all(dir)?;
        let port = crate::free_port();
        let node = crate::tools_dir().join("node/node_modules");
        let services = crate::repo().join("tests/services");
        let log = std::fs::File::create(dir.join("kinesis.log"))?;
        let mut cmd = Command::new("node");
        match peer {
            Peer::KinesisLocal => {
                cmd.current_dir(node.join("kinesis-local"))
                    .arg("--require")
                    .arg(services.join("kinesis_loopback.js"))
                    .arg("main.js")
                    .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
                    .env("KINESIS_MOCK_TLS_PORT", crate::free_port().to_string())
                    .env("LOG_LEVEL", "WARN");
                for d in [
                    "CREATE_STREAM_DURATION",
                    "DELETE_STREAM_DURATION",
                    "MERGE_SHARDS_DURATION",
                    "SPLIT_SHARD_DURATION",
                    "UPDATE_SHARD_COUNT_DURATION",
                ] {
                    cmd.env(d, "50ms");
                }
            }
            Peer::Kinesalite => {
                cmd.current_dir(dir)
                    .env("NODE_PATH", &node)
                    .arg(services.join("kinesalite.js"))
                    .arg(port.to_string())
                    .arg(dir.join("leveldb"));
            }
            Peer::Dynalite => {
                cmd.current_dir(dir)
                    .env("NODE_PATH", &node)
                    .arg(services.join("dynalite.js"))
                    .arg(port.to_string());
            }
        }
        let mut child = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start node ({e}): run scripts/deps.sh --tests"))?;
        let up = crate::wait_listening("kinesis", port, Duration::from_secs(60), || {
            match child.try_wait()? {
                Some(status) => anyhow::bail!(
                    "{peer:?} exited ({status}): {}",
                    std::fs::read_to_string(dir.join("kinesis.log")).unwrap_or_default()
                ),
                None => Ok(()),
            }
        });
        if let Err(e) = up {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(Kinesis { child, port })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `tests/services/kinesis_client.py ARGS…` against this peer (boto3): its standard output.
    pub fn client(&self, args: &[&str], input: Option<&str>) -> String {
        self.client_bytes(args, input.map(str::as_bytes))
    }

    /// [`Kinesis::client`] with any bytes on its standard input.
    pub fn client_bytes(&self, args: &[&str], input: Option<&[u8]>) -> String {
        let python = crate::tools_dir().join("python-venv/bin/python");
        let mut child = Command::new(python)
            .arg(crate::repo().join("tests/services/kinesis_client.py"))
            .arg(self.endpoint())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kinesis_client.py (scripts/deps.sh --tests installs boto3)");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped");
            if let Some(text) = input {
                stdin.write_all(text).expect("write to kinesis_client.py");
            }
        }
        let out = child.wait_with_output().expect("kinesis_client.py");
        assert!(
            out.status.success(),
            "kinesis_client.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
