//! README command 1 works on a fresh directory, and again on the second run.

use crate::support::Cli;

#[test]
fn quickstart_proves_its_point_twice() {
    let cli = Cli::new();
    for run in 0..2 {
        let out = cli
            .cmd(&["quickstart", "--provider", "copy"])
            .env_remove("SHADOWCOPY_CATALOG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run}: {}",
            crate::support::describe(&out)
        );
        for needle in [
            "missing from the copy: 0",
            "integrity_check ok",
            "no money created or lost",
            "(missing: 0)",
            "pre-restore",
        ] {
            assert!(
                text.contains(needle),
                "run {run}: {needle:?} not in:\n{text}"
            );
        }
    }
    assert!(cli
        .path("shadowcopy-quickstart/catalog/catalog.db")
        .exists());
}
