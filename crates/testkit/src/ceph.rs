//! A one-node Ceph cluster with its S3 gateway (RGW), started by `tests/services/ceph-rgw.sh` on
//! loopback ports of its own: the object-store suite's production S3 server.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running Ceph cluster with RGW on `port`; stopped when dropped.
pub struct Ceph {
    pub dir: PathBuf,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
}

fn script() -> PathBuf {
    crate::repo().join("tests/services/ceph-rgw.sh")
}

impl Ceph {
    /// Start a cluster in `dir/ceph` with one S3 user of these keys. Panics if it cannot start.
    pub fn start(dir: &Path, access_key: &str, secret_key: &str) -> Ceph {
        let port = crate::free_port();
        let ceph = Ceph {
            dir: dir.join("ceph"),
            port,
            access_key: access_key.into(),
            secret_key: secret_key.into(),
        };
        let out = Command::new(script())
            .arg("start")
            .arg(&ceph.dir)
            .args([&port.to_string(), access_key, secret_key])
            .output()
            .expect("run tests/services/ceph-rgw.sh");
        assert!(
            out.status.success(),
            "ceph-rgw.sh start failed (scripts/deps.sh --tests installs ceph-mon, ceph-osd, radosgw): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ceph
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket with a SigV4-signed PUT (curl, an independent S3 client).
    pub fn create_bucket(&self, bucket: &str) {
        let out = Command::new("curl")
            .args([
                "-s",
                "-f",
                "-X",
                "PUT",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
            ])
            .args([
                "--user",
                &format!("{}:{}", self.access_key, self.secret_key),
            ])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .arg(format!("{}/{bucket}", self.endpoint()))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "create bucket {bucket}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).status();
    }
}
