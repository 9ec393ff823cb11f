//! The web console in a real browser: Debian's chromium driven through chromedriver
//! (WebDriver, fantoccini). An admin signs in, creates a copy of a live SQLite ledger on a
//! real agent and watches its phases arrive until the job ends, reads the copy's phases,
//! verification and files and the set's writers and provider, damages the data, restores
//! the copy into a new directory (the live data untouched) and then in place through the
//! guided form (refused first without the confirmation, the message beside the field;
//! roll-forward and a directory outside the restore area refused) and finds the ledger
//! back; a PostgreSQL set's copy shows its log reach and is offered roll-forward; a viewer sees no restore or create and gets 403 from the endpoint; a
//! form posted without its CSRF token is refused. Screenshots of the main pages go to
//! $SHADOWCOPY_SCREENSHOTS (docs/img when the README's are taken again), else the temp dir.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use shadowcopy_testing::loopfs::skip_or_fail;
use shadowcopy_testing::postgres::{postgres_or_skip, PgOptions};

use crate::central::{Central, Host};
use crate::support::describe;

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("acceptInsecureCerts".into(), json!(true));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session")
}

fn screenshots() -> Option<PathBuf> {
    std::env::var_os("SHADOWCOPY_SCREENSHOTS").map(PathBuf::from)
}

async fn shot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("console-{name}.png")), png).unwrap();
}

async fn sign_in(c: &Client, base: &str, name: &str, password: &str) {
    c.goto(&format!("{base}/console/")).await.unwrap();
    c.wait()
        .for_element(Locator::Css("form.signin"))
        .await
        .unwrap();
    c.find(Locator::Css("input[name=name]"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    c.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    click(c, "form.signin button").await;
    if c.wait()
        .for_element(Locator::Css("span.who"))
        .await
        .is_err()
    {
        panic!(
            "{name} is not signed in; the page at {} is:\n{}",
            c.current_url().await.unwrap(),
            c.source().await.unwrap()
        );
    }
}

/// Waits until the job page says the job has ended; its state.
async fn job_end(c: &Client) -> String {
    let started = Instant::now();
    loop {
        if let Ok(e) = c.find(Locator::Css("#job-state")).await {
            if let Ok(Some(state)) = e.attr("data-state").await {
                if matches!(state.as_str(), "done" | "failed" | "cancelled") {
                    return state;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the job did not end within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A POST from inside the page (the browser's cookie goes with it); its status.
async fn post_status(c: &Client, path: &str, body: &str) -> u64 {
    let v = c
        .execute_async(
            "const [path, body, done] = arguments;
             fetch(path, {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body, redirect: 'manual'})
               .then(r => done(r.status)).catch(e => done(-1));",
            vec![json!(path), json!(body)],
        )
        .await
        .unwrap();
    v.as_u64().unwrap_or(0)
}

/// Clicks the element `css` names, once it is there.
async fn click(c: &Client, css: &str) {
    c.wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The text of the element `css` names, once it is there.
async fn text(c: &Client, css: &str) -> String {
    c.wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The texts of every element `css` names.
async fn texts(c: &Client, css: &str) -> Vec<String> {
    let mut texts = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.unwrap() {
        texts.push(e.text().await.unwrap());
    }
    texts
}

/// Loads `url` again until the element `css` names is on it (what the agent reports
/// arrives a few seconds after the job that changed it ends).
async fn reload_until(c: &Client, url: &str, css: &str) {
    let started = Instant::now();
    loop {
        c.goto(url).await.unwrap();
        if c.find(Locator::Css(css)).await.is_ok() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{url} has no {css} after 60 s:\n{}",
            c.source().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The host page's Create button for `set`.
fn create_button(set: &str) -> String {
    format!("form[action$='/sets/{set}/create'] button")
}

/// The session's CSRF token, from the sign-out form every page has.
async fn csrf_of(c: &Client) -> String {
    c.find(Locator::Css("form.signout input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap()
}

fn make_user(central: &Central, name: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = central
        .server_cmd(&["user", "create", name, "--role", role])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn the_console_creates_and_restores_a_copy_in_a_real_browser() {
    let test = "the_console_creates_and_restores_a_copy_in_a_real_browser";
    for tool in ["chromium", "chromedriver"] {
        if Command::new(tool).arg("--version").output().is_err() {
            skip_or_fail(
                test,
                &format!("{tool} is not installed (apt-get install chromium chromium-driver)"),
            );
            return;
        }
    }
    let Some(central) = Central::start(test, "127.0.0.1", &["127.0.0.1".to_string()]) else {
        return;
    };
    let Some(cluster) = postgres_or_skip(test, PgOptions::new()) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let shots = screenshots().unwrap_or_else(|| work.path().to_path_buf());
    // A SQLite set (point-in-time restores only) and a PostgreSQL one (roll-forward too).
    let config = format!(
        "[sets.app]\nprovider = \"copy\"\n[[sets.app.writers]]\nkind = \"sqlite\"\npath = \"{{DB}}\"\n\
         [sets.pg]\nprovider = \"copy\"\nverify = false\n[[sets.pg.writers]]\nkind = \"postgres\"\nurl = \"{}\"\n",
        cluster.url()
    );
    let mut host = Host::new("web1", &work.path().join("web1"), None, &config);
    host.write(1, 50);
    let base = central.url("127.0.0.1");
    host.start_agent(&base, Some(&central.enroll_token("web1")));
    make_user(&central, "ada", "admin", "a long enough passphrase");
    make_user(&central, "vic", "viewer", "another long passphrase");
    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = browser(&driver).await;
        // A wrong password: the sign-in page again, the message beside the fields.
        c.goto(&format!("{base}/console/hosts")).await.unwrap();
        c.wait()
            .for_element(Locator::Css("form.signin"))
            .await
            .unwrap();
        c.find(Locator::Css("input[name=name]"))
            .await
            .unwrap()
            .send_keys("ada")
            .await
            .unwrap();
        c.find(Locator::Css("input[name=password]"))
            .await
            .unwrap()
            .send_keys("wrong")
            .await
            .unwrap();
        click(&c, "form.signin button").await;
        let error = text(&c, ".field-error").await;
        assert!(error.contains("wrong"), "{error}");

        sign_in(&c, &base, "ada", "a long enough passphrase").await;
        c.wait()
            .for_element(Locator::LinkText("web1"))
            .await
            .unwrap();
        shot(&c, &shots, "hosts").await;
        // Enrolment: the one-time command to run on the new host, with this server's URL.
        c.find(Locator::Css("input[name=host]"))
            .await
            .unwrap()
            .send_keys("db9")
            .await
            .unwrap();
        click(&c, "form[action='/console/hosts/enroll'] button").await;
        let command = text(&c, "pre.command").await;
        assert!(
            command.contains("SHADOWCOPY_ENROLL_TOKEN=sce1_")
                && command.contains(&format!("--server {base} --host-name db9")),
            "{command}"
        );
        c.goto(&format!("{base}/console/hosts")).await.unwrap();
        let row = c
            .wait()
            .for_element(Locator::LinkText("web1"))
            .await
            .unwrap();
        row.click().await.unwrap();

        // Create a copy: one button per set, the job page follows it to its end.
        click(&c, &create_button("app")).await;
        c.wait()
            .for_element(Locator::Css("#job-state"))
            .await
            .unwrap();
        assert_eq!(job_end(&c).await, "done", "{}", host.log());
        // Its phases streamed in, as the agent reported them.
        let mut phases = Vec::new();
        for row in c
            .find_all(Locator::Css("#job-state tr.phase td:first-child"))
            .await
            .unwrap()
        {
            phases.push(row.text().await.unwrap());
        }
        for phase in ["freeze", "commit", "thaw", "verify"] {
            assert!(
                phases.iter().any(|p| p == phase),
                "{phase} missing from {phases:?}"
            );
        }
        shot(&c, &shots, "job").await;
        let copy_link = c.find(Locator::Css("#job-state a")).await.unwrap();
        let copy_href = copy_link.attr("href").await.unwrap().unwrap();
        let copy_id: i64 = copy_href.rsplit('/').next().unwrap().parse().unwrap();

        // The data damaged: rows gone.
        {
            let conn = rusqlite::Connection::open(&host.db).unwrap();
            conn.execute("DELETE FROM ledger WHERE seq > 10", [])
                .unwrap();
        }
        assert_eq!(host.ledger(), 10);

        // The copy's page: its phases with their timings, its verification, what the
        // writer reported and its files (once the agent has sent them).
        let copy_page = format!("{base}/console/hosts/web1/copies/{copy_id}");
        reload_until(&c, &copy_page, "table.phases tr.phase").await;
        let phases = texts(&c, "table.phases tr.phase td:first-child").await;
        for phase in ["identify", "freeze", "commit", "thaw", "verify"] {
            assert!(phases.iter().any(|p| p == phase), "{phase} missing from {phases:?}");
        }
        let verification = text(&c, "table.verifications").await;
        assert!(verification.contains("passed"), "{verification}");
        let page = text(&c, "main").await;
        assert!(page.contains("app.db") && page.contains("sqlite"), "{page}");
        shot(&c, &shots, "copy").await;

        // The host page: each set with its writers as the agent found them.
        let host_page = format!("{base}/console/hosts/web1");
        reload_until(&c, &host_page, "table.sets .badge").await;
        let sets = text(&c, "table.sets").await;
        assert!(sets.contains("stable"), "{sets}");
        shot(&c, &shots, "host").await;

        // The set page: writers and provider, policy, copies; SQLite keeps no logs, so
        // restores are point-in-time only.
        c.goto(&format!("{base}/console/hosts/web1/sets/app")).await.unwrap();
        let provider = text(&c, "tr.provider").await;
        assert!(provider.contains("ready") && provider.contains("copy"), "{provider}");
        let writer = text(&c, "tr.writer").await;
        assert!(writer.contains("stable"), "{writer}");
        let policy = text(&c, "dl.facts").await;
        assert!(policy.contains("point-in-time only"), "{policy}");
        shot(&c, &shots, "set").await;

        let restore_page = format!("{base}/console/hosts/web1/copies/{copy_id}/restore");
        c.goto(&restore_page).await.unwrap();
        c.wait()
            .for_element(Locator::Css("form.restore"))
            .await
            .unwrap();
        assert!(
            c.find(Locator::Css("input[value=roll-forward]")).await.is_err(),
            "roll-forward offered for SQLite"
        );
        // Posted anyway: refused, beside the field, nothing queued.
        let csrf = csrf_of(&c).await;
        let restore_path = format!("/console/hosts/web1/copies/{copy_id}/restore");
        let status = post_status(
            &c,
            &restore_path,
            &format!("csrf={csrf}&mode=roll-forward&target=in-place&confirm=yes"),
        )
        .await;
        assert_eq!(status, 400, "roll-forward of a SQLite copy");
        // A directory that would leave the restore area: refused.
        let status = post_status(
            &c,
            &restore_path,
            &format!("csrf={csrf}&mode=point-in-time&target=directory&directory=..%2F..%2Fetc&confirm=yes"),
        )
        .await;
        assert_eq!(status, 400, "a directory outside the restore area");

        // Into a new directory first: the copy's data there, the live data untouched.
        click(&c, "input[name=target][value=directory]").await;
        c.find(Locator::Css("input[name=directory]"))
            .await
            .unwrap()
            .send_keys("check1")
            .await
            .unwrap();
        click(&c, "input[name=confirm]").await;
        click(&c, "form.restore button.danger").await;
        c.wait()
            .for_element(Locator::Css("#job-state"))
            .await
            .unwrap();
        assert_eq!(job_end(&c).await, "done", "{}", host.log());
        let outcome = text(&c, "#job-state").await;
        assert!(outcome.contains("restores/check1"), "{outcome}");
        let restored = host.catalog().join("restores/check1/app.db");
        let rows: i64 = rusqlite::Connection::open(&restored)
            .unwrap_or_else(|e| panic!("{}: {e}", restored.display()))
            .query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 50, "the copy's ledger in the directory");
        assert_eq!(host.ledger(), 10, "the live data untouched");

        // Then in place.
        c.goto(&restore_page).await.unwrap();
        c.wait()
            .for_element(Locator::Css("form.restore"))
            .await
            .unwrap();
        shot(&c, &shots, "restore").await;
        // Without the confirmation: refused, the reason beside the box, nothing queued.
        click(&c, "form.restore button.danger").await;
        let why = text(&c, ".field-error").await;
        assert!(why.contains("confirm"), "{why}");
        click(&c, "input[name=confirm]").await;
        click(&c, "form.restore button.danger").await;
        c.wait()
            .for_element(Locator::Css("#job-state"))
            .await
            .unwrap();
        assert_eq!(job_end(&c).await, "done", "{}", host.log());
        assert_eq!(host.ledger(), 50, "the restore brought the ledger back");

        // The PostgreSQL set: a copy, then its log reach on the set page and roll-forward
        // offered with the stop points PostgreSQL takes.
        c.goto(&host_page).await.unwrap();
        click(&c, &create_button("pg")).await;
        c.wait()
            .for_element(Locator::Css("#job-state"))
            .await
            .unwrap();
        assert_eq!(job_end(&c).await, "done", "{}", host.log());
        let pg_copy: i64 = c
            .find(Locator::Css("#job-state a"))
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        reload_until(
            &c,
            &format!("{base}/console/hosts/web1/sets/pg"),
            "td.reach div",
        )
        .await;
        let reach = text(&c, "td.reach").await;
        assert!(
            reach.contains("point-in-time") && reach.contains("WAL from"),
            "{reach}"
        );
        // Tall enough to show the copies with their log reach.
        c.set_window_size(1280, 1100).await.unwrap();
        shot(&c, &shots, "set-postgres").await;
        c.set_window_size(1280, 800).await.unwrap();
        c.goto(&format!("{base}/console/hosts/web1/copies/{pg_copy}/restore"))
            .await
            .unwrap();
        c.wait()
            .for_element(Locator::Css("input[value=roll-forward]"))
            .await
            .unwrap();
        let form = text(&c, "form.restore").await;
        assert!(form.contains("an LSN") && form.contains("Would replay"), "{form}");
        shot(&c, &shots, "restore-postgres").await;

        // On a phone-sized screen.
        c.set_window_size(390, 844).await.unwrap();
        c.goto(&host_page).await.unwrap();
        c.wait().for_element(Locator::Css("table.sets")).await.unwrap();
        shot(&c, &shots, "phone-host").await;
        c.goto(&restore_page).await.unwrap();
        c.wait().for_element(Locator::Css("form.restore")).await.unwrap();
        shot(&c, &shots, "phone-restore").await;
        c.set_window_size(1280, 800).await.unwrap();

        // Old copies: a second copy, then the preview of "keep the newest 1" (the first
        // copy goes; the pre-restore copy stays, with its reason), then delete.
        c.goto(&host_page).await.unwrap();
        click(&c, &create_button("app")).await;
        c.wait()
            .for_element(Locator::Css("#job-state"))
            .await
            .unwrap();
        assert_eq!(job_end(&c).await, "done", "{}", host.log());
        c.goto(&format!(
            "{base}/console/hosts/web1/sets/app/prune?keep_last=1"
        ))
        .await
        .unwrap();
        c.wait()
            .for_element(Locator::Css("tr.decision"))
            .await
            .unwrap();
        let going = c
            .find_all(Locator::Css("tr.decision[data-keep=false]"))
            .await
            .unwrap();
        assert_eq!(going.len(), 1, "one copy goes");
        let gone_id: i64 = going[0]
            .find(Locator::Css("td"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(gone_id, copy_id, "the older created copy goes");
        shot(&c, &shots, "prune").await;
        click(&c, "form button.danger").await;
        c.accept_alert().await.unwrap();
        c.wait()
            .for_element(Locator::Css("#job-state"))
            .await
            .unwrap();
        assert_eq!(job_end(&c).await, "done", "{}", host.log());
        assert!(
            !host.local_copies().iter().any(|(id, _, _)| *id == copy_id),
            "copy {copy_id} was deleted on the host"
        );

        // A deletion whose list is not what the policy lists now (a stale preview, a
        // forged form) is refused, nothing deleted.
        let csrf = csrf_of(&c).await;
        let before = host.local_copies().len();
        let status = post_status(
            &c,
            "/console/hosts/web1/sets/app/prune",
            &format!("csrf={csrf}&copies=2:1&keep_last=1"),
        )
        .await;
        assert_eq!(status, 409);
        assert_eq!(host.local_copies().len(), before);

        // A copy that is gone (deleted in another tab, say): a clear page, not a 500.
        c.goto(&format!(
            "{base}/console/hosts/web1/copies/{copy_id}/restore"
        ))
        .await
        .unwrap();
        let gone = text(&c, "p.error").await;
        assert!(gone.contains(&format!("no copy {copy_id}")), "{gone}");

        // A form without its CSRF token is refused.
        let status = post_status(&c, "/console/hosts/web1/sets/app/create", "").await;
        assert_eq!(status, 403);

        // A viewer sees no create or restore, and the endpoint refuses them.
        c.delete_all_cookies().await.unwrap();
        sign_in(&c, &base, "vic", "another long passphrase").await;
        c.goto(&format!("{base}/console/hosts/web1/sets/app")).await.unwrap();
        c.wait()
            .for_element(Locator::Css("table.copies"))
            .await
            .unwrap();
        assert!(
            c.find(Locator::Css("a.restore")).await.is_err(),
            "a viewer sees a restore link"
        );
        assert!(
            c.find(Locator::Css("button.primary")).await.is_err(),
            "a viewer sees Create"
        );
        let csrf = csrf_of(&c).await;
        let status = post_status(
            &c,
            &format!("/console/hosts/web1/copies/{copy_id}/restore"),
            &format!("csrf={csrf}&mode=point-in-time&confirm=yes"),
        )
        .await;
        assert_eq!(status, 403);
        c.goto(&format!("{base}/console/jobs")).await.unwrap();
        c.wait()
            .for_element(Locator::Css("table.dense"))
            .await
            .unwrap();
        shot(&c, &shots, "jobs").await;
        c.close().await.unwrap();
    });
    // Six jobs (three copies, two restores, a deletion), all by ada; the restores and
    // the deletion audited.
    let jobs = central.op_json(&["jobs", "--all-hosts", "--json"]);
    assert_eq!(jobs.as_array().unwrap().len(), 6, "{jobs:#}");
    let audit = central.pg.psql(
        "SELECT string_agg(actor || ' ' || action, ',' ORDER BY id) FROM audit WHERE action IN ('restore', 'delete')",
    );
    assert_eq!(
        audit.trim(),
        "console ada restore,console ada restore,console ada delete"
    );
    host.stop_agent();
}
