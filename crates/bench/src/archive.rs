//! `shadowcopy-bench archive`: shadowcopy's archive on S3-compatible object storage
//! against pgBackRest (`repo1-type=s3`) and restic, in one run, on one local S3 server
//! (issue 15).
//!
//! The server: moto (in memory, plain HTTP on loopback, from the virtualenv
//! `scripts/install-deps.sh` makes) behind stunnel, which speaks TLS with a certificate
//! for `localhost` and `127.0.0.1` signed by a CA made for the run. pgBackRest's S3
//! driver speaks HTTPS only, and with Debian 12's OpenSSL 3 it fails on moto's own TLS
//! (`moto_server --ssl-cert`: "unexpected eof while reading", moto closes connections
//! without a TLS close_notify), so every tool goes through the same stunnel, each told
//! to trust that CA: shadowcopy by `AWS_CA_BUNDLE`, pgBackRest by
//! `repo1-storage-ca-file`, restic and curl by `--cacert`. One bucket, one prefix per
//! tool and part. Bytes stored are the sum of the object sizes under a prefix (listed
//! from moto); bytes sent by a step are that sum after minus before.
//!
//! PostgreSQL (`--scale`, default 100): a pgbench database (`pgbench -i -s N`, data
//! checksums on) on an XFS loop file system, with shadowcopy's WAL archive (`shadowcopy
//! pg setup --apply`) and a pgBackRest stanza whose repository is the bucket
//! (`archive_command` feeds both). With no load running, each step runs shadowcopy then
//! pgBackRest:
//!
//! 1. first push: `shadowcopy create --provider reflink` + `shadowcopy archive push ID`;
//!    `pgbackrest --type=full backup`;
//! 2. 1 % of the rows changed in one range (`UPDATE pgbench_accounts SET abalance =
//!    abalance + 1 WHERE aid <= scale × 1000`, then `CHECKPOINT`), then create + push
//!    again, and `pgbackrest --type=incr backup`;
//! 3. 1 % of the rows changed spread over the table (`WHERE aid % 100 = 0`: every page
//!    holds about 0.6 changed rows), then the same;
//! 4. the server is stopped and the data directory emptied (the disaster), the page
//!    cache dropped; `shadowcopy archive restore ID --to DIR` of the last archived copy
//!    with a new, empty catalog (a new host: no local block to reuse), then PostgreSQL
//!    started on the restored data directory until `SELECT count(*), sum(abalance) FROM
//!    pgbench_accounts` answers; then `pgbackrest restore --type=immediate
//!    --target-action=promote` of the last backup into the emptied data directory and the
//!    same start and query (both started with `archive_mode=off`, so neither restored
//!    server archives into the repositories). Both must hold scale × 100000 rows and the
//!    balance sum of the stopped server;
//! 5. the floor: the objects under `packs/` of shadowcopy's prefix read with `curl` (over
//!    the same TLS, `--cacert`, signed with `--aws-sigv4`), `--curl-parallel` at once
//!    (`xargs -P`), to /dev/null.
//!
//! SQLite (`--size`, default 1 GiB): the bank of `shadowcopy-sample` padded with random
//! 256 KiB rows to the size, on an XFS loop file system; the same steps with `shadowcopy
//! create --sqlite DB` and restic (`restic backup DB` of the checkpointed file; restic's
//! incremental is just another backup); the changes rewrite 1 % of the padding rows with
//! new random bytes (in one rowid range, then every 100th row), then `PRAGMA
//! wal_checkpoint(TRUNCATE)`; the restores are `shadowcopy archive restore ID --to DIR`
//! and `restic restore latest --target DIR`, each until the restored bank answers a
//! query, and must hold the data of the live bank.
//!
//! Per command: wall time and peak memory, the largest sum of the resident sizes of the
//! command's processes (its process group, sampled every 50 ms), and at least the largest
//! process's own high-water mark (VmHWM). shadowcopy's push time includes its `create`,
//! which is shown apart; shadowcopy runs with `SHADOWCOPY_VERIFY_PRIORITY=normal`, at the
//! priority the peers run at (by default its verification and pushes run at nice 19).
//! While a part runs, the CPU that processes other than this bench
//! and its children (moto, stunnel, the servers and tools included) used is noted.
//! The results go between the `bench:archive` markers of `--markdown`, each goal beside
//! its number.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::Value;
use shadowcopy_testing::loopfs::{FsKind, LoopFs};
use shadowcopy_testing::postgres::{make_postgres_dir, pg_bin, AdoptOptions, PgCluster};
use shadowcopy_testing::s3::{Moto, ACCESS_KEY, SECRET_KEY};

use crate::agent::{status_field, Busy};
use crate::common::{self, drop_caches, loadavg, shadowcopy};
use crate::peers::{empty_dir, timed_watching, version, Pgbackrest, Repository, S3Repository};
use crate::postgres::{
    data_estimate, make_clusters, psql, run_ok, setup_archive, too_big, Ctx, GIB, ROWS_PER_SCALE,
};
use crate::sqlite::ACCOUNTS;
use crate::stats::{human, human_bytes, parse_size};

/// The bucket every tool writes to, each under its own prefix.
const BUCKET: &str = "bench";
/// The passphrase of shadowcopy's archives and restic's repository.
const PASSPHRASE: &str = "shadowcopy-bench-archive";
/// How often a command's memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The goals of issue 15.
const MAX_INCREMENTAL_SHARE: f64 = 0.03;
const MIN_RESTORE_SPEEDUP: f64 = 3.0;
const MAX_RESTORE_OVER_CURL: f64 = 2.0;
const MAX_PEAK_BYTES: u64 = 300_000_000;

/// Options of the archive workload.
#[derive(clap::Args, Debug)]
pub struct ArchiveArgs {
    /// pgbench scale of the PostgreSQL part (scale 1 is about 15 MiB)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    scale: u32,
    /// Size of the SQLite bank of the SQLite part (e.g. 64MiB, 1GiB)
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Parts to measure, in this order (the section is rewritten with these only)
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "postgres,sqlite"
    )]
    parts: Vec<Part>,
    /// Downloads curl runs at once for the floor of the restore
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    curl_parallel: u32,
    /// Longest a single command (push, backup, restore) may run
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    limit: Duration,
    /// Where the loop images, catalogs and server sockets go [default: $TMPDIR]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The shadowcopy binary [default: `shadowcopy` beside this binary]
    #[arg(long, value_name = "PATH")]
    shadowcopy: Option<PathBuf>,
    /// Also write the results into this Markdown file, between the bench:archive markers
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

/// A part of the workload: one database, shadowcopy against its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// pgbench against pgBackRest with repo1-type=s3
    Postgres,
    /// a SQLite bank against restic
    Sqlite,
}

impl ArchiveArgs {
    /// The programs the chosen parts need.
    pub fn tools(&self) -> Vec<&'static str> {
        let mut tools = vec!["mkfs.xfs", "stunnel4", "openssl", "curl", "xargs"];
        if self.parts.contains(&Part::Postgres) {
            tools.push("pgbackrest");
        }
        if self.parts.contains(&Part::Sqlite) {
            tools.push("restic");
        }
        tools
    }

    /// Smaller than the sizes issue 15 asks for.
    fn quick(&self) -> bool {
        (self.parts.contains(&Part::Postgres) && self.scale < 100)
            || (self.parts.contains(&Part::Sqlite) && self.size < GIB)
    }
}

/// Runs the chosen parts (as root).
pub fn bench(args: &ArchiveArgs) -> anyhow::Result<()> {
    ensure!(!args.parts.is_empty(), "--parts is empty");
    if args.parts.contains(&Part::Postgres) {
        crate::postgres::prepare(args.dir.as_deref())?;
    } else {
        common::use_dir(args.dir.as_deref())?;
    }
    let bin = common::shadowcopy_bin(args.shadowcopy.as_deref())?;
    let load_before = loadavg();
    let s3 = S3::start()?;
    s3.export_env();
    let mut tables = Vec::new();
    for part in &args.parts {
        let began = Instant::now();
        let result = match part {
            Part::Postgres => postgres_part(args, &bin, &s3),
            Part::Sqlite => sqlite_part(args, &bin, &s3),
        }
        .with_context(|| format!("{part:?} part"))?;
        eprintln!("{:?} part took {}", part, human(began.elapsed()));
        let table = result.markdown();
        eprintln!("\n{table}");
        tables.push(table);
    }
    eprintln!(
        "moto held {} resident at the end",
        human_bytes(s3.moto_rss_kib() * 1024)
    );
    if let Some(md) = &args.markdown {
        let section = format!(
            "{}{}- versions: {}, {}, {}, {}, {}\n\n{}",
            if args.quick() {
                "**Quick check at small sizes, not the sizes issue 15 asks for** (scale 100, \
                 1 GiB).\n\n"
            } else {
                ""
            },
            common::environment(
                "XFS file systems (the databases, shadowcopy's copies, the restores)",
                &load_before,
                &loadavg()
            ),
            version(&pg_bin("postgres").to_string_lossy(), &["--version"]),
            version("pgbackrest", &["version"]),
            short_version("restic"),
            short_version("curl"),
            stunnel_version(),
            tables.join("\n")
        );
        common::write_section(md, "archive", section.trim_end())?;
        eprintln!("wrote the results into {}", md.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The S3 server

/// moto behind stunnel: one S3 server over TLS for every tool. Stops on drop.
struct S3 {
    /// The run's CA and the certificate stunnel shows; the CA is readable by the server
    /// user (pgBackRest runs as `postgres`).
    dir: tempfile::TempDir,
    tls: Child,
    port: u16,
    moto: Moto,
}

impl S3 {
    fn start() -> anyhow::Result<S3> {
        let moto = Moto::start_or_skip("shadowcopy-bench archive").context(
            "moto is needed: scripts/install-deps.sh installs it into ~/.cache/shadowcopy/moto-venv",
        )?;
        moto.create_bucket(BUCKET);
        let dir = tempfile::Builder::new()
            .prefix("shadowcopy-bench-s3-")
            .tempdir()?;
        make_postgres_dir(dir.path()).map_err(|e| anyhow!(e))?;
        // A CA and a server certificate it signs (rustls refuses a self-signed
        // certificate that is its own CA as the server's).
        let path = |name: &str| dir.path().join(name);
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=shadowcopy-bench CA", "-keyout"])
                .arg(path("ca.key"))
                .arg("-out")
                .arg(path("ca.pem")),
        )?;
        run_ok(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                ])
                .arg("-keyout")
                .arg(path("key.pem"))
                .arg("-out")
                .arg(path("server.csr")),
        )?;
        fs::write(
            path("server.ext"),
            "basicConstraints = CA:FALSE\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n",
        )?;
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
                .arg(path("server.csr"))
                .arg("-CA")
                .arg(path("ca.pem"))
                .arg("-CAkey")
                .arg(path("ca.key"))
                .arg("-extfile")
                .arg(path("server.ext"))
                .arg("-out")
                .arg(path("cert.pem")),
        )?;
        let pem = path("stunnel.pem");
        fs::write(
            &pem,
            [fs::read(path("key.pem"))?, fs::read(path("cert.pem"))?].concat(),
        )?;
        fs::set_permissions(
            path("ca.pem"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.path().join("stunnel.conf");
        fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = 3\n[s3]\naccept = 127.0.0.1:{port}\n\
                 connect = {}\ncert = {}\n",
                moto.endpoint.trim_start_matches("http://"),
                pem.display()
            ),
        )?;
        let log = fs::File::create(dir.path().join("stunnel.log"))?;
        let tls = Command::new("stunnel4")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start stunnel4")?;
        let s3 = S3 {
            dir,
            tls,
            port,
            moto,
        };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                t.elapsed() < Duration::from_secs(20),
                "stunnel does not listen on {port}: {}",
                fs::read_to_string(s3.dir.path().join("stunnel.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "S3: moto at {} behind stunnel at {}",
            s3.moto.endpoint,
            s3.endpoint()
        );
        Ok(s3)
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA every client is told to trust.
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The environment of every client started from here on: shadowcopy's (object_store)
    /// and restic's S3 settings and passphrases, and shadowcopy's verification and push
    /// at normal priority.
    fn export_env(&self) {
        for (k, v) in [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_CA_BUNDLE", self.ca().to_string_lossy().into_owned()),
            ("SHADOWCOPY_ARCHIVE_PASSWORD", PASSPHRASE.into()),
            ("RESTIC_PASSWORD", PASSPHRASE.into()),
            // Verification and pushes at the caller's priority, as the peers run, not
            // at nice 19: on a shared machine that would measure the others' load.
            ("SHADOWCOPY_VERIFY_PRIORITY", "normal".into()),
        ] {
            std::env::set_var(k, v);
        }
        std::env::remove_var("AWS_ALLOW_HTTP");
    }

    /// pgBackRest's repository under `path` of the bucket (by the name `localhost`, which
    /// its TLS check matches against the certificate).
    fn pgbackrest_repository(&self, path: &str) -> Repository {
        Repository::S3(S3Repository {
            host: "localhost".into(),
            port: self.port,
            bucket: BUCKET.into(),
            path: path.into(),
            ca_file: self.ca(),
            key: ACCESS_KEY.into(),
            secret: SECRET_KEY.into(),
        })
    }

    /// The objects under `prefix` with their sizes (ListObjectsV2 from moto, page by page).
    fn objects(&self, prefix: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/{BUCKET}?list-type=2&prefix={}",
                self.moto.endpoint,
                query_escape(prefix)
            );
            if let Some(t) = &token {
                url += &format!("&continuation-token={}", query_escape(t));
            }
            let out = run_ok(Command::new("curl").args(["-sf", &url]))?;
            let xml = String::from_utf8_lossy(&out.stdout);
            for contents in tags(&xml, "Contents") {
                let key = tags(contents, "Key").first().copied().unwrap_or_default();
                let size = tags(contents, "Size")
                    .first()
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("no size in the listing of {prefix}: {contents}"))?;
                all.push((key.to_string(), size));
            }
            match tags(&xml, "NextContinuationToken").first() {
                Some(t) if tags(&xml, "IsTruncated").first() == Some(&"true") => {
                    token = Some(t.to_string())
                }
                _ => return Ok(all),
            }
        }
    }

    /// The bytes stored under `prefix`.
    fn stored(&self, prefix: &str) -> anyhow::Result<u64> {
        Ok(self.objects(prefix)?.iter().map(|(_, n)| n).sum())
    }

    /// moto's resident memory (it holds the objects).
    fn moto_rss_kib(&self) -> u64 {
        processes()
            .iter()
            .filter(|p| p.ppid == std::process::id() && p.comm.starts_with("moto"))
            .filter_map(|p| status_kib(p.pid, "VmRSS"))
            .sum()
    }

    /// The floor of a restore: every object under `prefix` read with curl over the same
    /// TLS (signed GETs: moto refuses anonymous reads of a private bucket), `parallel` at
    /// once, to /dev/null. Returns the time and the bytes.
    fn curl_all(
        &self,
        prefix: &str,
        parallel: u32,
        limit: Duration,
    ) -> anyhow::Result<(Measured, u64)> {
        let objects = self.objects(prefix)?;
        ensure!(!objects.is_empty(), "no objects under {prefix}");
        let bytes = objects.iter().map(|(_, n)| n).sum();
        let list = self.dir.path().join("urls");
        let urls: String = objects
            .iter()
            .map(|(k, _)| format!("{}/{BUCKET}/{k}\n", self.endpoint()))
            .collect();
        fs::write(&list, urls)?;
        drop_caches()?;
        let measured = measured(
            Command::new("xargs")
                .arg("-a")
                .arg(&list)
                .args(["-P", &parallel.to_string(), "-n", "1"])
                .args(["curl", "-sSf", "-o", "/dev/null", "--aws-sigv4"])
                .arg("aws:amz:us-east-1:s3")
                .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}"), "--cacert"])
                .arg(self.ca()),
            limit,
        )?;
        Ok((measured, bytes))
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.tls.kill();
        let _ = self.tls.wait();
    }
}

/// The texts of the `<tag>` elements of `xml`, in order (no nesting of the same tag).
fn tags<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(a) = rest.find(&open) {
        let after = &rest[a + open.len()..];
        let Some(b) = after.find(&close) else { break };
        found.push(&after[..b]);
        rest = &after[b + close.len()..];
    }
    found
}

/// `s` percent-encoded for a URL's query (all but the unreserved characters).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The first two words of `program version` / `program --version`: `restic 0.14.0`.
fn short_version(program: &str) -> String {
    let flag = if program == "restic" {
        "version"
    } else {
        "--version"
    };
    version(program, &[flag])
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn stunnel_version() -> String {
    Command::new("stunnel4")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .find(|l| l.starts_with("stunnel"))
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "stunnel ?".into())
}

// ---------------------------------------------------------------------------------------
// Measuring commands

/// A process as /proc shows it.
struct Proc {
    pid: u32,
    ppid: u32,
    pgrp: u32,
    comm: String,
}

/// Every process (those that vanish while being read are left out).
fn processes() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (open, close) = (stat.find('(')?, stat.rfind(')')?);
            // After the name: state (3), ppid (4), pgrp (5).
            let f: Vec<&str> = stat[close + 1..].split_whitespace().take(3).collect();
            Some(Proc {
                pid,
                ppid: f.get(1)?.parse().ok()?,
                pgrp: f.get(2)?.parse().ok()?,
                comm: stat[open + 1..close].to_string(),
            })
        })
        .collect()
}

/// Every process below this one (its children, theirs, ...).
fn descendants() -> Vec<u32> {
    let all = processes();
    let parent: HashMap<u32, u32> = all.iter().map(|p| (p.pid, p.ppid)).collect();
    let me = std::process::id();
    all.iter()
        .map(|p| p.pid)
        .filter(|&pid| {
            let mut at = pid;
            for _ in 0..64 {
                match parent.get(&at) {
                    Some(&pp) if pp == me => return true,
                    Some(&pp) if pp > 1 => at = pp,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    status_field(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        key,
    )
}

/// The memory high-water mark of a command's process group, sampled.
#[derive(Default)]
struct Peak {
    last: Option<Instant>,
    /// The largest sum of the group's resident sizes seen.
    group_kib: u64,
    /// The largest high-water mark of one of its processes.
    process_kib: u64,
}

impl Peak {
    fn sample(&mut self, group: u32) {
        if self.last.is_some_and(|t| t.elapsed() < SAMPLE_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let mut sum = 0;
        for p in processes().iter().filter(|p| p.pgrp == group) {
            sum += status_kib(p.pid, "VmRSS").unwrap_or(0);
            self.process_kib = self
                .process_kib
                .max(status_kib(p.pid, "VmHWM").unwrap_or(0));
        }
        self.group_kib = self.group_kib.max(sum);
    }

    fn bytes(&self) -> u64 {
        self.group_kib.max(self.process_kib) * 1024
    }
}

/// What a measured command took.
struct Measured {
    took: Duration,
    peak_bytes: u64,
    stdout: Vec<u8>,
}

/// Runs `cmd` in its own process group with its memory sampled (see [`Peak`]).
fn measured(cmd: &mut Command, limit: Duration) -> anyhow::Result<Measured> {
    let mut peak = Peak::default();
    let (took, stdout) = timed_watching(cmd, limit, |pid| peak.sample(pid))?;
    Ok(Measured {
        took,
        peak_bytes: peak.bytes(),
        stdout,
    })
}

// ---------------------------------------------------------------------------------------
// The results

/// The floor of a restore: every pack under shadowcopy's `prefix` read with curl,
/// `--curl-parallel` at once.
fn curl_floor(s3: &S3, prefix: &str, args: &ArchiveArgs) -> anyhow::Result<Step> {
    let (curl, bytes) = s3.curl_all(&format!("{prefix}/packs/"), args.curl_parallel, args.limit)?;
    eprintln!("  curl: {} in {}", human_bytes(bytes), human(curl.took));
    Ok(Step {
        took: curl.took,
        command: curl.took,
        sent: bytes,
        peak_bytes: curl.peak_bytes,
        split: format!("{} at once", args.curl_parallel),
        detail: String::new(),
    })
}

/// One tool's step: a push (or backup), or a restore.
#[derive(Clone, Debug, Default)]
struct Step {
    took: Duration,
    /// The tool's own command (push, backup, restore): without shadowcopy's `create`
    /// and the database's start.
    command: Duration,
    /// Bytes the bucket gained under the tool's prefix (pushes).
    sent: u64,
    peak_bytes: u64,
    /// How `took` splits ("create 1.2 s + push 0.6 s"), for the table.
    split: String,
    /// What the tool reported, for the text under the table.
    detail: String,
}

impl Step {
    /// The time, with its split when it has one.
    fn time_cell(&self) -> String {
        if self.split.is_empty() {
            human(self.took)
        } else {
            format!("{} ({})", human(self.took), self.split)
        }
    }
}

/// One part's figures: shadowcopy's and the peer's, step by step.
struct PartResult {
    title: String,
    peer: &'static str,
    data_bytes: u64,
    /// First push, 1 % in one range, 1 % spread; each (shadowcopy, peer).
    pushes: [(Step, Step); 3],
    restores: (Step, Step),
    floor: Step,
    /// What shadowcopy's restore downloaded.
    downloaded: u64,
    stored: (u64, u64),
    others_cpu: f64,
    /// Whether the memory goal applies (scale 100 and up, 1 GiB and up).
    memory_goal: bool,
    /// The size the goals are stated at: `scale 100`, `1 GiB`.
    goal_size: &'static str,
    /// Whether the restore must be 3× faster than the peer's (pgBackRest's: issue 15
    /// sets that goal against pgBackRest only).
    restore_speedup_goal: bool,
    notes: Vec<String>,
}

const PUSHES: [&str; 3] = [
    "first push",
    "after 1 % of the rows changed in one range",
    "after 1 % of the rows changed, spread",
];

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

impl PartResult {
    fn markdown(&self) -> String {
        let peer = self.peer;
        let mut t = format!(
            "#### {}\n\n| | shadowcopy archive | {peer} | goal |\n|---|---|---|---|\n",
            self.title
        );
        let memory_goal = |bytes: u64| {
            let applies = if self.memory_goal {
                String::new()
            } else {
                format!(" (the goal is for {})", self.goal_size)
            };
            format!("under 300 MB{applies}: {}", verdict(bytes < MAX_PEAK_BYTES))
        };
        let first_sent = self.pushes[0].0.sent.max(1);
        for (i, (ours, theirs)) in self.pushes.iter().enumerate() {
            let name = PUSHES[i];
            t += &format!(
                "| {name}: time | {} | {} | |\n",
                ours.time_cell(),
                theirs.time_cell()
            );
            let share = |s: &Step, first: u64| {
                if i == 0 {
                    format!(" ({:.1} % of the data)", percent(s.sent, self.data_bytes))
                } else {
                    format!(
                        " ({:.1} % of the data, {:.1} % of the first push)",
                        percent(s.sent, self.data_bytes),
                        percent(s.sent, first)
                    )
                }
            };
            let goal = if i == 0 {
                String::new()
            } else {
                let of_data = ours.sent as f64 / self.data_bytes.max(1) as f64;
                format!(
                    "under 3 % of the data: {}",
                    verdict(of_data < MAX_INCREMENTAL_SHARE)
                )
            };
            t += &format!(
                "| {name}: bytes sent | {}{} | {}{} | {goal} |\n",
                human_bytes(ours.sent),
                share(ours, first_sent),
                human_bytes(theirs.sent),
                share(theirs, self.pushes[0].1.sent)
            );
            t += &format!(
                "| {name}: peak memory | {} | {} | {} |\n",
                mb(ours.peak_bytes),
                mb(theirs.peak_bytes),
                memory_goal(ours.peak_bytes)
            );
        }
        let (ours, theirs) = &self.restores;
        let speedup = theirs.took.as_secs_f64() / ours.took.as_secs_f64().max(1e-9);
        let versus = if speedup >= 1.0 {
            format!("{speedup:.1}× faster than {peer}'s")
        } else {
            format!("{:.1}× slower than {peer}'s", 1.0 / speedup)
        };
        let goal = if self.restore_speedup_goal {
            format!(
                "{versus}, at least 3× faster: {}",
                verdict(speedup >= MIN_RESTORE_SPEEDUP)
            )
        } else {
            format!("{versus} (no goal: the 3× is against pgBackRest)")
        };
        t += &format!(
            "| restore to a queryable database | {} | {} | {goal} |\n",
            ours.time_cell(),
            theirs.time_cell(),
        );
        t += &format!(
            "| restore: peak memory | {} | {} | {} |\n",
            mb(ours.peak_bytes),
            mb(theirs.peak_bytes),
            memory_goal(ours.peak_bytes)
        );
        let over_curl = ours.command.as_secs_f64() / self.floor.took.as_secs_f64().max(1e-9);
        t += &format!(
            "| floor: shadowcopy's packs ({}) read with curl, {} | {} | | `archive restore` {:.1}× the floor, within 2×: {} |\n",
            human_bytes(self.floor.sent),
            self.floor.split,
            human(self.floor.took),
            over_curl,
            verdict(over_curl <= MAX_RESTORE_OVER_CURL)
        );
        t += &format!(
            "| bytes stored at the end (data: {}) | {} | {} | |\n",
            human_bytes(self.data_bytes),
            human_bytes(self.stored.0),
            human_bytes(self.stored.1)
        );
        t += &format!(
            "\nMeanwhile other processes used {:.1} % of the CPUs. shadowcopy's restore \
             downloaded {}. ",
            self.others_cpu,
            human_bytes(self.downloaded)
        );
        let steps = |of: &dyn Fn(&(Step, Step)) -> &Step| -> String {
            PUSHES
                .iter()
                .zip(&self.pushes)
                .map(|(name, p)| format!("{name}: {}", of(p).detail))
                .collect::<Vec<_>>()
                .join("; ")
        };
        t += &format!(
            "shadowcopy's pushes: {}. {peer}'s: {}. shadowcopy's restore: {}.\n",
            steps(&|p| &p.0),
            steps(&|p| &p.1),
            ours.detail
        );
        for n in &self.notes {
            t += &format!("\n{n}\n");
        }
        t
    }
}

/// `part` in per cent of `whole`.
fn percent(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

// ---------------------------------------------------------------------------------------
// shadowcopy's archive

/// One shadowcopy archive (a prefix of the bucket) and the catalog of the copies it gets.
struct Archive<'a> {
    bin: &'a Path,
    catalog: &'a Path,
    prefix: &'static str,
    s3: &'a S3,
    limit: Duration,
    /// The manifest of the last push.
    last: Option<String>,
}

impl Archive<'_> {
    fn url(&self) -> String {
        format!("s3://{BUCKET}/{}", self.prefix)
    }

    fn init(&self) -> anyhow::Result<()> {
        shadowcopy(
            self.bin,
            self.catalog,
            "archive",
            &["init".into(), self.url()],
        )?;
        Ok(())
    }

    /// `archive push` of copy `created` (made in `create_took`).
    fn push(&mut self, created: &Value, create_took: Duration) -> anyhow::Result<Step> {
        let id = created["id"].as_i64().context("create --json has no id")?;
        let before = self.s3.stored(self.prefix)?;
        let run = measured(
            Command::new(self.bin)
                .args(["archive", "--archive", &self.url(), "push", &id.to_string()])
                .arg("--json")
                .arg("--catalog")
                .arg(self.catalog),
            self.limit,
        )?;
        let report: Value = serde_json::from_slice(&run.stdout).context("push --json output")?;
        let sent = self.s3.stored(self.prefix)? - before;
        self.last = Some(
            report["manifest"]
                .as_str()
                .context("push --json has no manifest")?
                .to_string(),
        );
        let step = Step {
            took: create_took + run.took,
            command: run.took,
            sent,
            peak_bytes: run.peak_bytes,
            split: format!("create {} + push {}", human(create_took), human(run.took)),
            detail: format!(
                "{} read, {} of {} blocks new, {} uploaded in {} packs, {} of {} files unchanged",
                human_bytes(report["bytes_read"].as_u64().unwrap_or(0)),
                report["blocks_new"],
                report["blocks"],
                human_bytes(report["bytes_uploaded"].as_u64().unwrap_or(0)),
                report["packs"],
                report["files_unchanged"],
                report["files"],
            ),
        };
        eprintln!(
            "  shadowcopy: {} sent, peak {}; {}: {}",
            human_bytes(step.sent),
            mb(step.peak_bytes),
            step.split,
            step.detail
        );
        Ok(step)
    }

    /// `archive restore LAST --to DIR` with a new, empty catalog (a new host). Returns the
    /// run and the report.
    fn restore_to(&self, dir: &Path) -> anyhow::Result<(Measured, Value)> {
        let manifest = self.last.as_deref().context("nothing was pushed")?;
        let new_host = tempfile::Builder::new()
            .prefix("shadowcopy-bench-archive-new-host-")
            .tempdir()?;
        drop_caches()?;
        let run = measured(
            Command::new(self.bin)
                .args(["archive", "--archive", &self.url(), "restore", manifest])
                .arg("--to")
                .arg(dir)
                .arg("--json")
                .arg("--catalog")
                .arg(new_host.path().join("catalog")),
            self.limit,
        )?;
        let report: Value =
            serde_json::from_slice(&run.stdout).context("archive restore --json output")?;
        Ok((run, report))
    }
}

/// A restore: the tool's command `run`, then the database's start until it answered
/// a query (`started`), and for PostgreSQL how much longer its first full scan of
/// `pgbench_accounts` took (`scan`, not counted); `detail` is what the tool reported
/// (shadowcopy's, for the text).
fn restore_step(
    run: &Measured,
    (started, scan): (Duration, Option<Duration>),
    detail: String,
) -> Step {
    let scan = scan
        .map(|d| format!("; the first full scan {} more", human(d)))
        .unwrap_or_default();
    Step {
        took: run.took + started,
        command: run.took,
        sent: 0,
        peak_bytes: run.peak_bytes,
        split: format!(
            "restore {} + start and first query {}{scan}",
            human(run.took),
            human(started)
        ),
        detail,
    }
}

/// What shadowcopy's restore reported.
fn restore_report(report: &Value) -> String {
    format!(
        "{} files, {} written, {} downloaded in {} requests, {} from local files, {} of \
         the command spent restoring (the rest: starting, opening the repository and its key)",
        report["files"],
        human_bytes(report["bytes"].as_u64().unwrap_or(0)),
        human_bytes(report["bytes_downloaded"].as_u64().unwrap_or(0)),
        report["requests"],
        human_bytes(report["bytes_reused"].as_u64().unwrap_or(0)),
        human(Duration::from_micros(
            report["took_us"].as_u64().unwrap_or(0)
        )),
    )
}

// ---------------------------------------------------------------------------------------
// PostgreSQL against pgBackRest

/// The changes between the pushes, as `UPDATE ... WHERE` conditions on pgbench_accounts.
fn pg_changes(scale: u32) -> [String; 2] {
    [
        format!("aid <= {}", i64::from(scale) * ROWS_PER_SCALE / 100),
        "aid % 100 = 0".into(),
    ]
}

fn postgres_part(args: &ArchiveArgs, bin: &Path, s3: &S3) -> anyhow::Result<PartResult> {
    let scale = args.scale;
    // The data, a reflink copy (shares its blocks), shadowcopy's restore beside it.
    if let Some(note) = too_big(scale, 3 * data_estimate(scale) + 4 * GIB)? {
        bail!("{note}");
    }
    let made = make_clusters(scale, &[FsKind::Xfs])?;
    let (_, mut setup) = made.setups.into_iter().next().context("no cluster")?;
    let catalog = tempfile::Builder::new()
        .prefix("shadowcopy-bench-archive-catalog-")
        .tempdir()?;
    let wal_archive = setup.fs.path().join("wal-archive");
    let url = setup_archive(bin, catalog.path(), &mut setup, &wal_archive)?;
    let pgbackrest =
        Pgbackrest::set_up(&setup, &s3.pgbackrest_repository("/pgbackrest"), args.limit)
            .context("pgBackRest's stanza on S3")?;
    let work = tempfile::Builder::new()
        .prefix("shadowcopy-bench-archive-pg-")
        .tempdir()?;
    let ctx = Ctx {
        bin,
        catalog: catalog.path(),
        archive: &wal_archive,
        work: work.path(),
        scale,
        url,
        setup: &mut setup,
        failures: Default::default(),
    };
    let mut archive = Archive {
        bin,
        catalog: catalog.path(),
        prefix: "shadowcopy-pg",
        s3,
        limit: args.limit,
        last: None,
    };
    archive.init()?;
    let peer_prefix = "pgbackrest";
    let data_bytes: u64 = ctx
        .psql("SELECT sum(pg_database_size(oid)) FROM pg_database")?
        .parse()
        .context("pg_database_size")?;

    let busy = Busy::now(&descendants());
    let mut pushes: Vec<(Step, Step)> = Vec::new();
    let changes = pg_changes(scale);
    for (i, name) in PUSHES.iter().enumerate() {
        if i > 0 {
            let condition = &changes[i - 1];
            let t = Instant::now();
            ctx.psql(&format!(
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE {condition}"
            ))?;
            ctx.psql("CHECKPOINT")?;
            eprintln!(
                "scale {scale}: changed the rows where {condition} in {}",
                human(t.elapsed())
            );
        }
        eprintln!("scale {scale}, {name}: shadowcopy create + archive push ...");
        let t = Instant::now();
        let created = ctx.create("reflink")?;
        let ours = archive.push(&created, t.elapsed())?;
        let kind = if i == 0 { "--type=full" } else { "--type=incr" };
        eprintln!("scale {scale}, {name}: pgbackrest {kind} backup ...");
        let before = s3.stored(peer_prefix)?;
        let run = measured(&mut pgbackrest.command(&[kind, "backup"]), args.limit)?;
        let theirs = Step {
            took: run.took,
            command: run.took,
            sent: s3.stored(peer_prefix)? - before,
            peak_bytes: run.peak_bytes,
            split: String::new(),
            detail: format!("`{kind} backup`"),
        };
        eprintln!(
            "  pgbackrest: {} in {}, {} sent, peak {}",
            kind,
            human(theirs.took),
            human_bytes(theirs.sent),
            mb(theirs.peak_bytes)
        );
        pushes.push((ours, theirs));
    }
    let label = pgbackrest.newest_label()?;
    let want = ctx.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts")?;

    // The disaster: the server stops, its data directory is emptied.
    ctx.setup.server.stop();
    let data = ctx.cluster().data_dir().to_path_buf();
    empty_dir(&data)?;

    eprintln!("scale {scale}: shadowcopy archive restore --to (a new host) ...");
    let restored = ctx.setup.fs.path().join("restored-shadowcopy");
    let (run, report) = archive.restore_to(&restored)?;
    let restored_data = restored.join(data.strip_prefix("/").unwrap_or(&data));
    let started = start_and_query(&restored_data, &want)?;
    let ours = restore_step(&run, started, restore_report(&report));
    eprintln!("  shadowcopy: {}; {}", ours.split, ours.detail);
    fs::remove_dir_all(&restored)?;

    eprintln!("scale {scale}: pgbackrest restore of {label} ...");
    drop_caches()?;
    let set = format!("--set={label}");
    let run = measured(
        &mut pgbackrest.command(&[
            "restore",
            "--type=immediate",
            "--target-action=promote",
            &set,
        ]),
        args.limit,
    )?;
    let started = start_and_query(&data, &want)?;
    let theirs = restore_step(&run, started, String::new());
    eprintln!("  pgbackrest: {}", theirs.split);

    eprintln!("scale {scale}: curl of shadowcopy's packs ...");
    let floor = curl_floor(s3, archive.prefix, args)?;
    let others_cpu = busy.others_since(&Busy::now(&descendants()));

    Ok(PartResult {
        title: format!(
            "PostgreSQL, pgbench scale {scale} ({} in all databases), against pgBackRest",
            human_bytes(data_bytes)
        ),
        peer: "pgBackRest",
        data_bytes,
        pushes: pushes.try_into().map_err(|_| anyhow!("three pushes"))?,
        restores: (ours, theirs),
        floor,
        downloaded: report["bytes_downloaded"].as_u64().unwrap_or(0),
        stored: (s3.stored(archive.prefix)?, s3.stored(peer_prefix)?),
        others_cpu,
        memory_goal: scale >= 100,
        goal_size: "scale 100",
        restore_speedup_goal: true,
        notes: vec![format!(
            "{}: its bytes include the WAL its `archive-push` sent meanwhile \
             (shadowcopy's WAL archive stays local here; a copy holds the WAL it needs). \
             pgBackRest's incremental backup sends each changed file whole (its block \
             incremental came in 2.46). The changes: `UPDATE pgbench_accounts SET abalance = \
             abalance + 1 WHERE {}` (1 % of the rows in one range), then `WHERE {}`, each \
             followed by `CHECKPOINT`.",
            version("pgbackrest", &["version"]),
            changes[0],
            changes[1]
        )],
    })
}

/// Starts PostgreSQL on a restored data directory (`archive_mode=off`: it must not archive
/// into the repositories) and queries it until it answers (`SELECT count(*) FROM
/// pgbench_branches`: queryable), then checks that `SELECT count(*), sum(abalance) FROM
/// pgbench_accounts` answers `want`. Returns how long until the first answer, and how
/// much longer the full scan took. The server is stopped afterwards.
fn start_and_query(data: &Path, want: &str) -> anyhow::Result<(Duration, Option<Duration>)> {
    let t = Instant::now();
    let cluster = PgCluster::try_adopt(data, AdoptOptions::new().setting("archive_mode", "off"))
        .map_err(|e| anyhow!(e))?;
    cluster.try_start().map_err(|e| anyhow!(e))?;
    loop {
        match psql(&cluster, "SELECT count(*) FROM pgbench_branches") {
            Ok(_) => break,
            Err(e) if t.elapsed() > Duration::from_secs(600) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let queryable = t.elapsed();
    let got = psql(
        &cluster,
        "SELECT count(*), sum(abalance) FROM pgbench_accounts",
    )?;
    let scan = t.elapsed() - queryable;
    ensure!(
        got == want,
        "RESTORE IS WRONG: count and balance sum of pgbench_accounts are {got}, the stopped \
         server had {want}"
    );
    cluster.stop();
    Ok((queryable, Some(scan)))
}

// ---------------------------------------------------------------------------------------
// SQLite against restic

/// The changes between the pushes, as conditions on the padding rows' rowids.
const SQLITE_CHANGES: [&str; 2] = [
    "rowid IN (SELECT rowid FROM filler ORDER BY rowid LIMIT max(1, (SELECT count(*) FROM filler) / 100))",
    "rowid % 100 = 0",
];

/// What must survive a restore of the bank: the accounts' count and sum, the padding
/// rows' count and bytes, and the first bytes of every changed row.
const SQLITE_DIGEST: &str = "SELECT (SELECT count(*) || '/' || sum(balance) FROM accounts) \
     || '/' || (SELECT count(*) || '/' || sum(length(data)) FROM filler) \
     || '/' || (SELECT group_concat(hex(substr(data, 1, 8)), '') FROM filler \
                WHERE rowid % 100 = 0 OR rowid <= 3)";

fn sqlite_digest(db: &Path) -> anyhow::Result<String> {
    let conn = rusqlite::Connection::open(db)?;
    Ok(conn.query_row(SQLITE_DIGEST, [], |r| r.get(0))?)
}

fn sqlite_part(args: &ArchiveArgs, bin: &Path, s3: &S3) -> anyhow::Result<PartResult> {
    let size = args.size;
    // The bank, its reflink copies (shared), two restores.
    let fs = LoopFs::new(FsKind::Xfs, 4 * size + 4 * GIB).map_err(|e| anyhow!(e))?;
    let db = fs.path().join("bank/bank.db");
    fs::create_dir_all(db.parent().context("no parent")?)?;
    eprintln!("SQLite: a bank padded to {} ...", human_bytes(size));
    shadowcopy_sample::create(&db, ACCOUNTS, true)?;
    shadowcopy_sample::pad_to(&db, size)?;
    let data_bytes = fs::metadata(&db)?.len();
    let catalog = tempfile::Builder::new()
        .prefix("shadowcopy-bench-archive-catalog-")
        .tempdir()?;
    let mut archive = Archive {
        bin,
        catalog: catalog.path(),
        prefix: "shadowcopy-sqlite",
        s3,
        limit: args.limit,
        last: None,
    };
    archive.init()?;
    let peer_prefix = "restic";
    let restic_cache = tempfile::Builder::new()
        .prefix("shadowcopy-bench-restic-cache-")
        .tempdir()?;
    let restic = |rest: &[&str]| {
        let mut cmd = Command::new("restic");
        cmd.arg("--cacert")
            .arg(s3.ca())
            .arg("--cache-dir")
            .arg(restic_cache.path())
            .args([
                "-r",
                &format!("s3:{}/{BUCKET}/{peer_prefix}", s3.endpoint()),
            ])
            .args(rest);
        cmd
    };
    run_ok(&mut restic(&["init"]))?;

    let busy = Busy::now(&descendants());
    let mut pushes = Vec::new();
    for (i, name) in PUSHES.iter().enumerate() {
        if i > 0 {
            let condition = SQLITE_CHANGES[i - 1];
            let conn = rusqlite::Connection::open(&db)?;
            let changed = conn.execute(
                &format!("UPDATE filler SET data = randomblob(length(data)) WHERE {condition}"),
                [],
            )?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            eprintln!("SQLite: rewrote {changed} padding rows");
        }
        eprintln!("SQLite, {name}: shadowcopy create + archive push ...");
        let t = Instant::now();
        let out = shadowcopy(
            bin,
            catalog.path(),
            "create",
            &[
                "--sqlite".into(),
                db.to_string_lossy().into(),
                "--provider".into(),
                "reflink".into(),
                "--copies-dir".into(),
                fs.path().join("copies").to_string_lossy().into(),
                "--json".into(),
            ],
        )?;
        let created: Value = serde_json::from_slice(&out.stdout).context("create --json")?;
        ensure!(
            created["verification"]["ok"].as_bool() == Some(true),
            "copy {} did not pass verification: {}",
            created["id"],
            created["verification"]
        );
        let ours = archive.push(&created, t.elapsed())?;
        eprintln!("SQLite, {name}: restic backup ...");
        let before = s3.stored(peer_prefix)?;
        let run = measured(
            &mut restic(&["backup", "--json", &db.to_string_lossy()]),
            args.limit,
        )?;
        let summary = String::from_utf8_lossy(&run.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .unwrap_or_default();
        let theirs = Step {
            took: run.took,
            command: run.took,
            sent: s3.stored(peer_prefix)? - before,
            peak_bytes: run.peak_bytes,
            split: String::new(),
            detail: format!(
                "{} added",
                human_bytes(summary["data_added"].as_u64().unwrap_or(0))
            ),
        };
        eprintln!(
            "  restic: {} sent, peak {}; {}",
            human_bytes(theirs.sent),
            mb(theirs.peak_bytes),
            theirs.detail
        );
        pushes.push((ours, theirs));
    }
    let want = sqlite_digest(&db)?;

    // The disaster: the bank is gone.
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", db.display()));
    }

    eprintln!("SQLite: shadowcopy archive restore --to (a new host) ...");
    let restored = fs.path().join("restored-shadowcopy");
    let (run, report) = archive.restore_to(&restored)?;
    let restored_db = restored.join(db.strip_prefix("/").unwrap_or(&db));
    let started = query_bank(&restored_db)?;
    let ours = restore_step(&run, (started, None), restore_report(&report));
    eprintln!("  shadowcopy: {}; {}", ours.split, ours.detail);
    check_bank(&restored_db, &want)?;
    fs::remove_dir_all(&restored)?;

    eprintln!("SQLite: restic restore latest ...");
    let restored = fs.path().join("restored-restic");
    drop_caches()?;
    let run = measured(
        &mut restic(&["restore", "latest", "--target", &restored.to_string_lossy()]),
        args.limit,
    )?;
    let restored_db = restored.join(db.strip_prefix("/").unwrap_or(&db));
    let started = query_bank(&restored_db)?;
    let theirs = restore_step(&run, (started, None), String::new());
    eprintln!("  restic: {}", theirs.split);
    check_bank(&restored_db, &want)?;
    fs::remove_dir_all(&restored)?;

    eprintln!("SQLite: curl of shadowcopy's packs ...");
    let floor = curl_floor(s3, archive.prefix, args)?;
    let others_cpu = busy.others_since(&Busy::now(&descendants()));

    Ok(PartResult {
        title: format!("SQLite, a {} bank, against restic", human_bytes(data_bytes)),
        peer: "restic",
        data_bytes,
        pushes: pushes.try_into().map_err(|_| anyhow!("three pushes"))?,
        restores: (ours, theirs),
        floor,
        downloaded: report["bytes_downloaded"].as_u64().unwrap_or(0),
        stored: (s3.stored(archive.prefix)?, s3.stored(peer_prefix)?),
        others_cpu,
        memory_goal: size >= GIB,
        goal_size: "1 GiB",
        restore_speedup_goal: false,
        notes: vec![format!(
            "{}: its backups read the live file (checkpointed, nothing writing), its \
             incremental is a second backup (content-defined chunks, ~1 MiB average). The \
             changes rewrite the padding rows (256 KiB of random bytes each) where {} (1 % \
             of them), then where `{}`, each followed by `PRAGMA wal_checkpoint(TRUNCATE)`.",
            short_version("restic"),
            "the rowid is among the first 1 %",
            SQLITE_CHANGES[1]
        )],
    })
}

/// Opens a restored bank and counts its accounts; returns how long until it answered.
fn query_bank(db: &Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let conn = rusqlite::Connection::open(db)?;
    let accounts: i64 = conn.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?;
    ensure!(
        accounts == ACCOUNTS,
        "RESTORE IS WRONG: the restored bank has {accounts} accounts"
    );
    Ok(t.elapsed())
}

/// The restored bank holds what the live one held, and passes `quick_check`.
fn check_bank(db: &Path, want: &str) -> anyhow::Result<()> {
    let got = sqlite_digest(db)?;
    ensure!(
        got == want,
        "RESTORE IS WRONG: the restored bank differs from the live one"
    );
    let conn = rusqlite::Connection::open(db)?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    ensure!(check == "ok", "RESTORE IS WRONG: quick_check says {check}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_read_tag_by_tag() {
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated>\
                   <Contents><Key>a/1</Key><Size>10</Size></Contents>\
                   <Contents><Key>a/2</Key><Size>32</Size></Contents>\
                   <NextContinuationToken>x+y=</NextContinuationToken></ListBucketResult>";
        let contents = tags(xml, "Contents");
        assert_eq!(contents.len(), 2);
        assert_eq!(tags(contents[1], "Key"), ["a/2"]);
        assert_eq!(tags(contents[1], "Size"), ["32"]);
        assert_eq!(tags(xml, "NextContinuationToken"), ["x+y="]);
        assert!(tags(xml, "Missing").is_empty());
        assert_eq!(query_escape("x+y=/a_b"), "x%2By%3D%2Fa_b");
    }

    #[test]
    fn the_pg_changes_are_one_percent_of_the_rows() {
        let [range, spread] = pg_changes(5);
        assert_eq!(range, "aid <= 5000");
        assert_eq!(spread, "aid % 100 = 0");
    }

    #[test]
    fn a_command_s_memory_is_sampled() {
        let run = measured(
            Command::new("python3").args([
                "-c",
                "import time; x = bytearray(60_000_000); time.sleep(0.3)",
            ]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(run.peak_bytes > 60_000_000, "{}", run.peak_bytes);
        assert!(run.took >= Duration::from_millis(300));
    }

    #[test]
    fn descendants_include_a_child() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        assert!(descendants().contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
