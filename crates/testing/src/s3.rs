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

/// A TCP proxy in front of a server that answers some connections' first request with
/// `500 Internal Server Error` and closes them (what an overloaded S3 front end does),
/// and passes every other connection through untouched. Connection number N (from 1)
/// fails when `fails(N)`.
pub struct FaultProxy {
    pub endpoint: String,
    injected: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream: &str, fails: fn(usize) -> bool) -> FaultProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;

        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let endpoint = format!("http://{}", listener.local_addr().expect("bound"));
        let injected = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (injected.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !halt.load(Ordering::Relaxed) {
                let (mut client, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                n += 1;
                if fails(n) {
                    // Read the request head, answer 500, close.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n")
                        && client.read(&mut byte).is_ok_and(|r| r == 1)
                    {
                        head.push(byte[0]);
                    }
                    let _ = client.write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    count.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut c2, mut s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (mut client, mut server) = (client, server);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client, &mut server);
                    let _ = server.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        FaultProxy {
            endpoint,
            injected,
            stop,
        }
    }

    /// How many 500s were answered.
    pub fn injected(&self) -> usize {
        self.injected.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
