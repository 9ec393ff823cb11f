//! The WAL side of PostgreSQL copies, on a real cluster under a ledger load: verified
//! copies expire archived WAL but never what a kept copy needs (delete a copy, truncate,
//! roll the others forward); `pg log-analysis` finds the chain and its holes; a
//! roll-forward with `--until` stops at its target.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use shadowcopy_testing::postgres::{Ledger, PgCluster};
use shadowcopy_testing::wait;

use crate::postgres::{archiving_cluster, create, destroy_data_files, wait_for_promotion};
use crate::support::{describe, Cli};

/// Segment names (24 hex digits) held by the archive, `.zst` stripped.
fn archived_segments(archive: &Path) -> BTreeSet<String> {
    std::fs::read_dir(archive)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let name = name.strip_suffix(".zst")?.to_string();
            (name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())).then_some(name)
        })
        .collect()
}

/// The log/seg part of a segment name: what truncation compares.
fn position(segment: &str) -> &str {
    &segment[8..]
}

/// Ends `n` WAL segments under the running load and waits until the archiver has them.
fn switch_wal(cluster: &PgCluster, n: usize) {
    let mut last = String::new();
    let mut mark = cluster.psql("SELECT pg_current_wal_insert_lsn()");
    for _ in 0..n {
        // The switch of a segment nothing was written to since the last one does nothing:
        // wait until the load has written WAL after the mark.
        wait::until(
            Duration::from_secs(30),
            || cluster.psql(&format!("SELECT pg_current_wal_insert_lsn() > '{mark}'")) == "t",
            || format!("the load wrote no WAL after {mark}"),
        );
        // The name of the segment the switch ended.
        last = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
        mark = cluster.psql("SELECT pg_current_wal_insert_lsn()");
    }
    let waited = std::time::Instant::now();
    while cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < last {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the archiver did not reach {last}: {} (archive_mode {}, command {})\n{}",
            cluster.psql("SELECT row(a.*)::text FROM pg_stat_archiver a"),
            cluster.psql("SHOW archive_mode"),
            cluster.psql("SHOW archive_command"),
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The copy's first needed segment, from `pg log-analysis`.
fn start_segment(cli: &Cli, id: &str) -> String {
    let a = cli.json(&["pg", "log-analysis", id, "--json"]);
    a["start_segment"].as_str().unwrap().to_string()
}

fn notes(created: &serde_json::Value) -> String {
    created["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn postgres_truncation_never_removes_wal_a_kept_copy_needs() {
    let cli = Cli::new();
    let Some((cluster, archive)) = archiving_cluster("postgres_truncation", &cli) else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    let ledger = Ledger::start(&cluster.config(), 2, Duration::from_millis(2));
    switch_wal(&cluster, 3);

    // The first verified copy expires what was archived before its start.
    let a = create(&cli, &cluster, &archive);
    let a_id = a["id"].as_i64().unwrap().to_string();
    let a_start = start_segment(&cli, &a_id);
    assert!(
        notes(&a).contains(&format!("before {a_start}")),
        "{}",
        notes(&a)
    );
    let left = archived_segments(&archive);
    assert!(
        left.iter().all(|s| position(s) >= position(&a_start)),
        "nothing before {a_start} is left: {left:?}"
    );

    switch_wal(&cluster, 3);
    let b = create(&cli, &cluster, &archive);
    let b_id = b["id"].as_i64().unwrap().to_string();
    let b_start = start_segment(&cli, &b_id);
    switch_wal(&cluster, 3);
    let before_c = archived_segments(&archive);
    let c = create(&cli, &cluster, &archive);
    // Copy A is kept: its WAL stays, although two newer copies exist.
    assert!(
        notes(&c).contains(&format!("nothing to expire before {a_start}"))
            && notes(&c).contains(&format!("copy {a_id}")),
        "{}",
        notes(&c)
    );
    assert!(archived_segments(&archive).is_superset(&before_c));

    // A copy made without verification truncates nothing.
    let unverified = cli.json(&[
        "create",
        "--postgres",
        &cluster.url(),
        "--pg-archive",
        archive.to_str().unwrap(),
        "--provider",
        "copy",
        "--no-verify",
        "--json",
    ]);
    assert_eq!(unverified["notes"], serde_json::json!([]), "{unverified}");

    // Once A is deleted, the next verified copy expires up to B's start, and no further.
    cli.ok(&["delete", &a_id]);
    switch_wal(&cluster, 2);
    let d = create(&cli, &cluster, &archive);
    assert!(
        notes(&d).contains(&format!("before {b_start}"))
            && notes(&d).contains(&format!("copy {b_id}")),
        "{}",
        notes(&d)
    );
    assert!(notes(&d).contains("expired"), "{}", notes(&d));
    let left = archived_segments(&archive);
    assert!(
        left.iter().all(|s| position(s) >= position(&b_start)),
        "{left:?}"
    );
    assert!(
        left.contains(&b_start),
        "B's first segment is kept: {left:?}"
    );
    let analysis = cli.json(&["pg", "log-analysis", &b_id, "--json"]);
    assert_eq!(
        analysis["roll_forward"]["holes"],
        serde_json::json!([]),
        "{analysis:#}"
    );

    // B, the oldest kept copy, still rolls forward to the last acknowledged commit.
    let stats = ledger.stop();
    cluster.stop();
    destroy_data_files(&cluster);
    let out = cli.run(&[
        "restore",
        &b_id,
        "--mode",
        "roll-forward",
        "--discard-current",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    cluster.start();
    let state = wait_for_promotion(&cluster);
    let lost = state.missing(&stats.acknowledged);
    assert!(
        lost.is_empty(),
        "roll-forward from copy {b_id} lost {} acknowledged commits\n{}",
        lost.len(),
        cluster.log()
    );
    assert!(state.balanced(), "{state:?}");
}

#[test]
fn wal_that_the_sets_archive_lacks_stays_on_the_host() {
    let cli = Cli::new();
    let Some((cluster, wal_archive)) = archiving_cluster("wal_the_archive_lacks", &cli) else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    let ledger = Ledger::start(&cluster.config(), 2, Duration::from_millis(2));
    switch_wal(&cluster, 2);
    // Every set of this config has an archive off the host.
    let repo = cli.path("archive");
    let config = crate::archive::config_with_archive(&cli, &repo);
    let run = |args: &[&str]| crate::archive::json_with_config(&cli, &config, args);
    let create = || {
        let url = cluster.url();
        let dir = wal_archive.to_str().unwrap();
        run(&[
            "create",
            "--postgres",
            &url,
            "--pg-archive",
            dir,
            "--provider",
            "copy",
            "--json",
        ])
    };
    run(&["archive", "init", "--json"]);

    // Nothing of the WAL is in the archive yet: nothing is expired, with a warning.
    let before = archived_segments(&wal_archive);
    let a = create();
    let a_id = a["id"].as_i64().unwrap().to_string();
    let set = a["set"].as_str().unwrap().to_string();
    assert!(
        a["warnings"]
            .to_string()
            .contains("the set's archive holds none of its WAL yet"),
        "{a:#}"
    );
    assert!(archived_segments(&wal_archive).is_superset(&before));

    // The copy and its WAL go to the archive; then more WAL, only on this host.
    run(&["archive", "push", &a_id, "--json"]);
    let logs = run(&["archive", "push-logs", "--set", &set, "--json"]);
    assert!(logs["copied"].as_u64().unwrap() >= 2, "{logs:#}");
    let through = archived_segments(&wal_archive)
        .into_iter()
        .next_back()
        .unwrap();
    switch_wal(&cluster, 3);
    let only_here: BTreeSet<String> = archived_segments(&wal_archive)
        .into_iter()
        .filter(|s| position(s) > position(&through))
        .collect();
    assert!(only_here.len() >= 3, "{only_here:?}");

    // With A gone from the host, the next copy would expire up to its own start; it
    // stops at the newest segment the archive holds.
    run(&["delete", &a_id, "--json"]);
    let b = create();
    let b_id = b["id"].as_i64().unwrap().to_string();
    let b_start = start_segment(&cli, &b_id);
    assert!(
        position(&b_start) > position(&through),
        "{b_start} {through}"
    );
    let n = notes(&b);
    assert!(
        n.contains(&format!("before {through}"))
            && n.contains("the newest WAL in the set's archive"),
        "{n}"
    );
    let left = archived_segments(&wal_archive);
    assert!(
        left.is_superset(&only_here),
        "{left:?} lacks some of {only_here:?}"
    );
    assert!(
        left.iter().all(|s| position(s) >= position(&through)),
        "{left:?}"
    );

    // Once the archive has them, the next copy expires up to its start.
    run(&["archive", "push-logs", "--set", &set, "--json"]);
    switch_wal(&cluster, 1);
    let c = create();
    let c_notes = notes(&c);
    assert!(c_notes.contains(&format!("before {b_start}")), "{c_notes}");
    ledger.stop();
}

#[test]
fn postgres_log_analysis_finds_the_chain_and_its_holes() {
    let cli = Cli::new();
    let Some((cluster, archive)) = archiving_cluster("postgres_log_analysis", &cli) else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    let ledger = Ledger::start(&cluster.config(), 2, Duration::from_millis(2));
    let created = create(&cli, &cluster, &archive);
    let id = created["id"].as_i64().unwrap().to_string();
    switch_wal(&cluster, 4);
    // Checkpoints recycle the old segments in pg_wal: from here on the archive is the
    // only place that holds the WAL right after the copy.
    cluster.psql("CHECKPOINT");
    switch_wal(&cluster, 1);
    cluster.psql("CHECKPOINT");
    let stats = ledger.stop();
    assert!(stats.error_count == 0, "{:?}", stats.errors);

    let a = cli.json(&["pg", "log-analysis", &id, "--json"]);
    let current = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert_eq!(a["roll_forward"]["last_segment"], current.as_str(), "{a:#}");
    assert_eq!(a["roll_forward"]["holes"], serde_json::json!([]), "{a:#}");
    assert!(
        a["roll_forward"]["newest_commit"]["xid"].as_u64().is_some(),
        "pg_waldump finds the newest commit: {a:#}"
    );
    assert!(a["point_in_time"]["stop_lsn"].is_string(), "{a:#}");
    assert!(a["in_copy"]["count"].as_u64().unwrap() >= 1, "{a:#}");

    // Lose one archived segment that pg_wal no longer holds: the chain has a hole there.
    let live_first = a["live"]["first"].as_str().unwrap().to_string();
    let start = a["start_segment"].as_str().unwrap().to_string();
    let victim = archived_segments(&archive)
        .into_iter()
        .find(|s| position(s) > position(&start) && position(s) < position(&live_first))
        .expect("an archived segment between the copy and the live WAL");
    std::fs::remove_file(archive.join(format!("{victim}.zst"))).unwrap();
    let a = cli.json(&["pg", "log-analysis", &id, "--json"]);
    let holes = a["roll_forward"]["holes"].as_array().unwrap();
    assert_eq!(holes.len(), 1, "{a:#}");
    assert_eq!(holes[0]["first"], victim.as_str());
    assert_eq!(a["roll_forward"]["first_missing"], victim.as_str());
    assert!(a["roll_forward"]["unreachable_segments"].as_u64().unwrap() > 0);
    let human = cli.ok(&["pg", "log-analysis", &id]);
    assert!(human.contains("HOLE") && human.contains(&victim), "{human}");

    // An unknown copy is a usage error.
    let out = cli.run(&["pg", "log-analysis", "999"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn postgres_roll_forward_until_a_time_stops_there() {
    let cli = Cli::new();
    let Some((cluster, archive)) = archiving_cluster("postgres_roll_forward_until", &cli) else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    let ledger = Ledger::start(&cluster.config(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(50, Duration::from_secs(20)));
    let created = create(&cli, &cluster, &archive);
    let id = created["id"].as_i64().unwrap().to_string();
    assert!(ledger.wait_for_commits(ledger.committed() + 100, Duration::from_secs(30)));
    let before = ledger.stop().acknowledged;

    std::thread::sleep(Duration::from_millis(1100));
    let target = cluster.psql("SELECT clock_timestamp()::text");
    std::thread::sleep(Duration::from_millis(1100));
    let ledger = Ledger::start(&cluster.config(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(100, Duration::from_secs(30)));
    let after = ledger.stop().acknowledged;
    cluster.stop();

    // A target that is no time, LSN or xid is refused before anything is written.
    let out = cli.run(&[
        "restore",
        &id,
        "--mode",
        "roll-forward",
        "--until",
        "yesterday",
        "--discard-current",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--until"),
        "{}",
        describe(&out)
    );
    assert!(!cluster.data_dir().join("recovery.signal").exists());

    destroy_data_files(&cluster);
    let out = cli.run(&[
        "restore",
        &id,
        "--mode",
        "roll-forward",
        "--until",
        &target,
        "--discard-current",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    cluster.start();
    let state = wait_for_promotion(&cluster);
    assert!(
        state.missing(&before).is_empty(),
        "every commit before {target} is back: {state:?}"
    );
    let present: BTreeSet<i64> = state.ids.iter().copied().collect();
    let replayed_past: Vec<i64> = after
        .iter()
        .filter(|i| present.contains(i))
        .copied()
        .collect();
    assert!(
        replayed_past.is_empty(),
        "nothing committed after {target} is replayed, yet {} are: {:?}",
        replayed_past.len(),
        &replayed_past[..replayed_past.len().min(5)]
    );
    assert!(state.balanced(), "{state:?}");
}
