//! pgbench as a second load on a test cluster, beside the ledger: its tables, a run in
//! the background, and its invariant. Every pgbench (TPC-B-like) transaction adds the
//! same delta to one account, one teller and one branch and records it in the history,
//! so in any consistent state the four sums are equal.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::postgres::{clean_env, pg_bin, PgCluster};

fn pgbench(cluster: &PgCluster) -> Command {
    let mut cmd = Command::new(pg_bin("pgbench"));
    clean_env(&mut cmd);
    cmd.arg("-h")
        .arg(cluster.socket_dir())
        .arg("-p")
        .arg(cluster.port().to_string())
        .args(["-U", "postgres"])
        .stdin(Stdio::null());
    cmd
}

/// `pgbench -i -s SCALE -q`: the pgbench tables in database `postgres`.
pub fn init(cluster: &PgCluster, scale: u32) -> Result<(), String> {
    let out = pgbench(cluster)
        .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
        .output()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pgbench -i failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A pgbench run in the background; killed when dropped.
pub struct PgbenchRun {
    child: Child,
}

/// Starts `pgbench -c CLIENTS -T SECONDS -n` (no vacuum). It reconnects nothing: a
/// client whose connection fails ends, which is fine for a load.
pub fn start(cluster: &PgCluster, clients: u32, duration: Duration) -> PgbenchRun {
    let child = pgbench(cluster)
        .args(["-n", "-c", &clients.to_string(), "-j", "1", "-T"])
        .arg(duration.as_secs().max(1).to_string())
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbench starts");
    PgbenchRun { child }
}

impl PgbenchRun {
    /// Ends the run at once (transactions in flight abort).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PgbenchRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pgbench invariant on `cluster`: returns the number of history rows when the sums
/// of account, teller and branch balances and of the history's deltas agree.
pub fn check(cluster: &PgCluster) -> Result<u64, String> {
    let row = cluster.try_psql(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' ||
                (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' ||
                (SELECT sum(bbalance) FROM pgbench_branches) || ' ' ||
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history) || ' ' ||
                (SELECT count(*) FROM pgbench_history)",
    )?;
    let parts: Vec<&str> = row.split(' ').collect();
    if parts.len() != 5 || parts[..4].iter().any(|p| *p != parts[0]) {
        return Err(format!(
            "pgbench balances disagree (accounts, tellers, branches, history): {row}"
        ));
    }
    parts[4]
        .parse()
        .map_err(|e| format!("history count {:?}: {e}", parts[4]))
}
