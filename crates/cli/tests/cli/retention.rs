//! `delete --policy`: each set's retention policy from the config file decides which
//! copies stay (and says why); the dry run shows the same decisions and deletes nothing;
//! the newest verified copy survives any policy; a bad policy is refused with its line.

use crate::support::{describe, stderr, Cli};

fn config(cli: &Cli, retention: &str) -> String {
    let db = cli.path("bank.db");
    if !db.exists() {
        cli.bank("bank.db", 0);
    }
    let path = cli.path("c.toml");
    std::fs::write(
        &path,
        format!(
            "[sets.bank]\nprovider = \"copy\"\n[[sets.bank.writers]]\nkind = \"sqlite\"\npath = \"{}\"\n[sets.bank.retention]\n{retention}\n",
            db.display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn ids(cli: &Cli, c: &str) -> Vec<i64> {
    cli.json(&["--config", c, "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn the_policy_keeps_what_it_says_and_the_dry_run_shows_the_same() {
    let cli = Cli::new();
    let c = config(&cli, "keep_last = 2");
    for _ in 0..4 {
        cli.ok(&["--config", &c, "create", "bank", "--quiet"]);
    }
    assert_eq!(ids(&cli, &c), vec![1, 2, 3, 4]);

    let dry = cli.json(&["--config", &c, "delete", "--policy", "--dry-run", "--json"]);
    let decisions = dry["sets"][0]["decisions"].as_array().unwrap();
    let kept: Vec<i64> = decisions
        .iter()
        .filter(|d| d["keep"].as_bool().unwrap())
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(kept, vec![3, 4], "{dry:#}");
    assert_eq!(decisions[0]["reasons"][0], "no rule of the policy keeps it");
    assert_eq!(decisions[3]["reasons"][0], "last 1");
    assert_eq!(dry["deleted"].as_array().unwrap().len(), 2);
    assert!(dry["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["deleted"] == false));
    assert_eq!(ids(&cli, &c), vec![1, 2, 3, 4], "a dry run deleted copies");

    let text = cli.ok(&["--config", &c, "delete", "--policy"]);
    assert!(text.contains("deleted copy 1 of `bank`"), "{text}");
    assert!(text.contains("set `bank`: keep_last 2"), "{text}");
    assert!(text.contains("keep         copy 4"), "{text}");
    assert_eq!(ids(&cli, &c), vec![3, 4]);
    // Idempotent: nothing more to delete.
    let again = cli.json(&["--config", &c, "delete", "--policy", "--json"]);
    assert!(again["deleted"].as_array().unwrap().is_empty(), "{again:#}");
}

#[test]
fn the_newest_verified_copy_survives_a_policy_that_would_drop_it() {
    let cli = Cli::new();
    let c = config(&cli, "keep_last = 1");
    cli.ok(&["--config", &c, "create", "bank", "--quiet"]);
    cli.ok(&["--config", &c, "create", "bank", "--quiet", "--no-verify"]);
    let out = cli.json(&["--config", &c, "delete", "--policy", "--json"]);
    assert!(out["deleted"].as_array().unwrap().is_empty(), "{out:#}");
    let reasons = &out["sets"][0]["decisions"][0]["reasons"];
    assert_eq!(
        reasons[0], "the newest verified copy (never deleted by a policy)",
        "{out:#}"
    );
    assert_eq!(ids(&cli, &c), vec![1, 2]);
}

#[test]
fn bad_policies_and_sets_without_one_are_refused_and_nothing_is_deleted() {
    let cli = Cli::new();
    for (policy, wanted) in [
        ("keep_dayly = 3", "unknown field `keep_dayly`"),
        ("keep_daily = -1", "c.toml:"),
        ("keep_within = \"soon\"", "invalid duration"),
    ] {
        let c = config(&cli, policy);
        let out = cli.run(&["--config", &c, "delete", "--policy"]);
        assert_eq!(out.status.code(), Some(2), "{policy}: {}", describe(&out));
        assert!(
            stderr(&out).contains(wanted),
            "{policy}: {}",
            describe(&out)
        );
    }
    let c = config(&cli, "keep_last = 1");
    cli.ok(&["--config", &c, "create", "bank", "--quiet"]);
    let out = cli.run(&["--config", &c, "delete", "--policy", "--set", "other"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("set `other` has no retention policy"),
        "{}",
        describe(&out)
    );
    let out = cli.run(&["delete", "--policy"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("no retention policy is configured"),
        "{}",
        describe(&out)
    );
    let out = cli.run(&["--config", &c, "delete", "--policy", "3"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_eq!(ids(&cli, &c), vec![1]);
}
