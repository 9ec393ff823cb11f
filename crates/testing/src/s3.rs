//! A real S3-compatible server for tests: moto (from PyPI, in the virtualenv
//! `scripts/install-deps.sh` makes), in memory, on a free loopback port, stopped on
//! drop. Without moto a test skips, or fails under `SHADOWCOPY_TEST_REQUIRE_ROOT=1`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::loopfs::skip;
use crate::wait::until;

/// Credentials moto accepts (any are).
pub const ACCESS_KEY: &str = "shadowcopy-test";
pub const SECRET_KEY: &str = "shadowcopy-test-secret";

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    venv: PathBuf,
    pub endpoint: String,
}

fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("SHADOWCOPY_MOTO_VENV") {
        return PathBuf::from(v);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("shadowcopy/moto-venv")
}

impl Moto {
    /// Starts moto, or says why `test` skips.
    pub fn start_or_skip(test: &str) -> Option<Moto> {
        let venv = venv();
        let server = venv.join("bin/moto_server");
        if !server.exists() {
            skip(
                test,
                &format!(
                    "moto is not installed at {} (scripts/install-deps.sh installs it)",
                    server.display()
                ),
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto {
            child,
            venv,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        until(
            Duration::from_secs(60),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || format!("moto listens on {}", moto.endpoint),
        );
        Some(moto)
    }

    /// The environment a client needs (the standard AWS variables).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Creates bucket `name` (with boto3, as a user's tooling would).
    pub fn create_bucket(&self, name: &str) {
        let out = Command::new(self.venv.join("bin/python"))
            .args([
                "-c",
                &format!(
                    "import boto3; boto3.client('s3', endpoint_url='{}', aws_access_key_id='{ACCESS_KEY}', \
                     aws_secret_access_key='{SECRET_KEY}', region_name='us-east-1').create_bucket(Bucket='{name}')",
                    self.endpoint
                ),
            ])
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "create bucket {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
