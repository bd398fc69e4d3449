//! `mosquitto`: the MQTT broker of the mqtt tests and benchmark (apt), in a folder of its own, with
//! persistence, on a free loopback port.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A mosquitto broker on 127.0.0.1, stopped when dropped.
pub struct Mosquitto {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

/// As root, mosquitto switches to user `mosquitto`, which cannot read the caller's files; `user
/// root` keeps it as it is.
pub fn run_as_line() -> &'static str {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        "user root\n"
    } else {
        ""
    }
}

impl Mosquitto {
    /// Start a broker whose files live in `dir`; `extra` is appended to its config (anonymous
    /// clients are allowed unless it sets a `password_file`). Panics if it cannot start.
    pub fn start(dir: &Path, extra: &str) -> Mosquitto {
        Self::try_start(dir, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Mosquitto::start`], returning the error.
    pub fn try_start(dir: &Path, extra: &str) -> anyhow::Result<Mosquitto> {
        std::fs::create_dir_all(dir.join("data"))?;
        let port = crate::free_port();
        let anonymous = if extra.contains("password_file") {
            ""
        } else {
            "allow_anonymous true\n"
        };
        let conf = format!(
            "listener {port} 127.0.0.1\npersistence true\npersistence_location {}/\n\
             max_inflight_messages 1000\nmax_queued_messages 0\nlog_dest stderr\n{}{extra}\n{anonymous}",
            dir.join("data").display(),
            run_as_line()
        );
        std::fs::write(dir.join("mosquitto.conf"), conf)?;
        let mut m = Mosquitto {
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        m.launch()?;
        Ok(m)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("cannot start mosquitto ({e}): apt-get install mosquitto")
            })?;
        self.child = Some(child);
        crate::wait_listening("mosquitto", self.port, Duration::from_secs(10), || Ok(()))
    }

    /// SIGTERM (mosquitto saves its persistence file) and start again on the same port.
    pub fn restart(&mut self) {
        self.terminate();
        self.launch().unwrap_or_else(|e| panic!("{e}"));
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// `mosquitto_pub` publishing each line of `lines` as one message.
    pub fn publish(&self, topic: &str, qos: u8, lines: &[String], extra: &[&str]) {
        let mut child = self
            .pub_command(topic, qos, extra)
            .spawn()
            .expect("mosquitto_pub (apt-get install mosquitto-clients)");
        let mut stdin = child.stdin.take().expect("piped stdin");
        for l in lines {
            writeln!(stdin, "{l}").expect("write to mosquitto_pub");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("wait for mosquitto_pub");
        assert!(
            out.status.success(),
            "mosquitto_pub failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `mosquitto_pub -l` to this broker, reading messages from its stdin.
    pub fn pub_command(&self, topic: &str, qos: u8, extra: &[&str]) -> Command {
        let mut c = Command::new("mosquitto_pub");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", topic])
            .args(["-q", &qos.to_string(), "-l"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.terminate();
    }
}
