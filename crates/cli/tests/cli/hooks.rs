//! `create --exec-writer SCRIPT`: a hook called with every event, its failures and hangs
//! contained, and its freeze undone by the watchdog when shadowcopy is killed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shadowcopy_testing::wait;

use crate::support::{assert_writable, kill9, stderr, Cli};

/// A hook that logs `EVENT SHADOWCOPY_EVENT SHADOWCOPY_SET` and fails or hangs in freeze
/// when told to by the environment.
fn hook(cli: &Cli) -> (PathBuf, PathBuf) {
    let script = cli.path("hook.sh");
    let log = cli.path("hook.log");
    std::fs::write(
        &script,
        "#!/bin/bash\n\
         echo \"$1 $SHADOWCOPY_EVENT $SHADOWCOPY_SET\" >> \"$HOOK_LOG\"\n\
         if [ \"$1\" = freeze ] && [ -n \"$FAIL_FREEZE\" ]; then echo 'cannot flush the cache' >&2; exit 1; fi\n\
         if [ \"$1\" = freeze ] && [ -n \"$HANG_FREEZE\" ]; then sleep 61; fi\n\
         if [ \"$1\" = freeze ] && [ -n \"$BUSY_FREEZES\" ] && [ \"$(grep -c '^freeze' \"$HOOK_LOG\")\" -le \"$BUSY_FREEZES\" ]; then echo 'cache busy' >&2; exit 75; fi\n\
         exit 0\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

fn events(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn a_hook_sees_every_event_in_order_with_the_set_s_facts() {
    let cli = Cli::new();
    cli.bank("bank.db", 0);
    let (script, log) = hook(&cli);
    let s = script.to_str().unwrap();
    let out = cli
        .cmd(&[
            "create",
            "--sqlite",
            "bank.db",
            "--exec-writer",
            s,
            "--provider",
            "copy",
            "--json",
        ])
        .env("HOOK_LOG", &log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        events(&log),
        [
            "prepare",
            "freeze",
            "thaw",
            "post-snapshot",
            "backup-complete"
        ]
    );
    let first = std::fs::read_to_string(&log).unwrap();
    assert!(first.starts_with("prepare prepare bank.db"), "{first}");
    let out = cli
        .cmd(&["restore", "1", "--discard-current"])
        .env("HOOK_LOG", &log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(&events(&log)[5..], ["pre-restore", "post-restore"]);
}

#[test]
fn a_hook_that_fails_to_freeze_aborts_the_set_and_its_output_is_recorded() {
    let cli = Cli::new();
    let db = cli.bank("bank.db", 0);
    let (script, log) = hook(&cli);
    let out = cli
        .cmd(&[
            "create",
            "--sqlite",
            "bank.db",
            "--exec-writer",
            script.to_str().unwrap(),
        ])
        .env("HOOK_LOG", &log)
        .env("FAIL_FREEZE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot flush the cache"),
        "{}",
        stderr(&out)
    );
    assert_eq!(events(&log), ["prepare", "freeze", "thaw", "abort"]);
    assert_writable(&db);
    let list = cli.json(&["list", "--json"]);
    assert_eq!(list[0]["state"], "failed");
    assert!(
        list[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot flush the cache"),
        "the hook's output is in the catalog"
    );
    let out = cli
        .cmd(&[
            "create",
            "--sqlite",
            "bank.db",
            "--exec-writer",
            script.to_str().unwrap(),
        ])
        .env("HOOK_LOG", &log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the next run succeeds: {}",
        stderr(&out)
    );
}

/// A hook exiting 75 (busy) from `freeze` has the set run again, up to three times in
/// all; every discarded attempt is a failed copy, never usable, and the note says why.
#[test]
fn a_busy_hook_has_the_set_run_again_up_to_three_times() {
    let cli = Cli::new();
    let db = cli.bank("bank.db", 0);
    let (script, log) = hook(&cli);
    let create = |busy_freezes: &str| {
        cli.cmd(&[
            "create",
            "--sqlite",
            "bank.db",
            "--exec-writer",
            script.to_str().unwrap(),
            "--json",
        ])
        .env("HOOK_LOG", &log)
        .env("BUSY_FREEZES", busy_freezes)
        .output()
        .unwrap()
    };
    // Busy twice, then not: the third attempt is the copy.
    let out = create("2");
    assert!(out.status.success(), "{}", stderr(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let notes = created["notes"].to_string();
    assert!(
        notes.contains("attempt 1 of 3 was discarded")
            && notes.contains("attempt 2 of 3")
            && notes.contains("cache busy"),
        "{created}"
    );
    assert!(
        stderr(&out).contains("attempt 2 of 3 was discarded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        events(&log),
        [
            "prepare",
            "freeze",
            "thaw",
            "abort", // attempt 1
            "prepare",
            "freeze",
            "thaw",
            "abort", // attempt 2
            "prepare",
            "freeze",
            "thaw",
            "post-snapshot",
            "backup-complete",
        ]
    );
    let list = cli.json(&["list", "--json"]);
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "failed").count(),
        2,
        "{list}"
    );
    assert_eq!(states.len(), 3, "{list}");

    // Busy every time: three attempts, then the error, and nothing more listed usable.
    std::fs::remove_file(&log).unwrap();
    let out = create("9");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exited with 75 (busy, try again)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(events(&log).iter().filter(|e| *e == "freeze").count(), 3);
    assert_writable(&db);
    let list = cli.json(&["list", "--json"]);
    let usable = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] != "failed")
        .count();
    assert_eq!((list.as_array().unwrap().len(), usable), (6, 1), "{list}");
}

fn sleepers() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0061\x00"))
        .count()
}

#[test]
fn a_hook_that_hangs_in_freeze_is_killed_at_the_deadline() {
    let cli = Cli::new();
    let db = cli.bank("bank.db", 0);
    let (script, log) = hook(&cli);
    let before = sleepers();
    let started = Instant::now();
    let out = cli
        .cmd(&[
            "create",
            "--sqlite",
            "bank.db",
            "--exec-writer",
            script.to_str().unwrap(),
            "--freeze-deadline",
            "1s",
        ])
        .env("HOOK_LOG", &log)
        .env("HANG_FREEZE", "1")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not finish within"),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
    assert_eq!(events(&log), ["prepare", "freeze", "thaw", "abort"]);
    assert_writable(&db);
    assert_eq!(
        sleepers(),
        before,
        "the hung hook's whole process group was killed"
    );
}

#[test]
fn kill_9_while_a_hook_holds_its_freeze_runs_the_hook_s_thaw() {
    let cli = Cli::new();
    cli.bank_in_mode("bank.db", 256 << 20, false);
    let (script, log) = hook(&cli);
    let mut child = cli
        .cmd(&[
            "create",
            "--sqlite",
            "bank.db",
            "--exec-writer",
            script.to_str().unwrap(),
            "--provider",
            "copy",
            "--freeze-deadline",
            "60s",
        ])
        .env("HOOK_LOG", &log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cli.wait_for_phase("freeze", Duration::from_secs(60));
    // The hook's freeze runs inside the freeze phase.
    wait::until(
        Duration::from_secs(10),
        || events(&log).contains(&"freeze".to_string()),
        || format!("the hook's freeze did not run: {:?}", events(&log)),
    );
    kill9(&mut child);
    let killed = Instant::now();
    while !events(&log).contains(&"thaw".to_string()) {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "the watchdog did not run `hook thaw`: {:?}",
            events(&log)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
