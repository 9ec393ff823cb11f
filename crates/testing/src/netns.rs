//! Simulated hosts: a network namespace per host, joined to this one by a veth pair
//! (this side `10.X.N.1`, the host's side `10.X.N.2`; X is taken from the test
//! process's id so that parallel test processes do not collide). A process started
//! with [`NetNs::command`] sees only its own link; [`NetNs::cut`] takes the link down
//! (a partition) and [`NetNs::heal`] brings it back. Dropping it deletes the namespace
//! and its link, also when the test fails. Needs root and `ip` (iproute2).

use std::process::Command;

use crate::loopfs::skip;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One simulated host's namespace and link.
pub struct NetNs {
    pub name: String,
    link: String,
    /// This side's address (what the host reaches us by).
    pub here: String,
    /// The host's address.
    pub there: String,
}

impl NetNs {
    /// Namespace number `n` (1..=250) of this test process.
    pub fn new(n: u8) -> Result<NetNs, String> {
        let pid = std::process::id();
        let x = 100 + (pid % 150) as u8;
        let name = format!("sc{pid}n{n}");
        let link = format!("sc{}v{n}", pid % 100_000);
        let ns = NetNs {
            here: format!("10.{x}.{n}.1"),
            there: format!("10.{x}.{n}.2"),
            name,
            link,
        };
        let peer = format!("{}p", ns.link);
        ip(&["netns", "add", &ns.name])?;
        // From here on, Drop removes what was made.
        ip(&[
            "link", "add", &ns.link, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &ns.name])?;
        ip(&["addr", "add", &format!("{}/24", ns.here), "dev", &ns.link])?;
        ip(&["link", "set", &ns.link, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns.name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{}/24", ns.there), "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `program` to run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Takes the link down: the host can no longer reach us, nor we it.
    pub fn cut(&self) {
        ip(&["link", "set", &self.link, "down"]).unwrap();
    }

    /// Brings the link back.
    pub fn heal(&self) {
        ip(&["link", "set", &self.link, "up"]).unwrap();
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Whether namespaces can be made here (root and `ip`); else says why the test skips
/// (a failure under SHADOWCOPY_TEST_REQUIRE_ROOT=1).
pub fn require_netns(test: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        return skip(test, "needs root to make network namespaces");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return skip(test, "needs `ip` (iproute2) for network namespaces");
    }
    true
}
