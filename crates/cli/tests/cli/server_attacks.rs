//! The backup server plays against callers it must refuse: an agent certificate from
//! another CA, an expired one, a revoked host, a reused enrolment token, a token for
//! another host name, a token naming another CA, an agent reaching for another host's
//! job, operators without a token, with a bad one or below the role a call needs, and
//! malformed or oversized requests. Each is refused, logged, and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use shadowcopy_agent::link::https::ServerClient;
use shadowcopy_agent::link::identity::{enroll, operator_client, pinned_client_config, Identity};

use crate::central::Central;
use crate::support::describe;

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One call: (HTTP status, JSON body), or the error that kept it from an answer.
fn call(
    client: &ServerClient,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Value), String> {
    let answer = block(client.call(method, path, body, Duration::from_secs(20)))
        .map_err(|e| format!("{e:#}"))?;
    let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    Ok((answer.status, value))
}

fn json_body(v: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&v).unwrap())
}

/// A client presenting `cert`/`key` and trusting the server's CA.
fn client_with(central: &Central, cert: &str, key: &str) -> ServerClient {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(central.state_dir().join("ca/ca.pem")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(shadowcopy_agent::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    ServerClient::new(&central.url("127.0.0.1"), Arc::new(config), None).unwrap()
}

/// A certificate for `host`, signed by `issuer`, valid from `not_before` to `not_after`.
fn cert_for(
    host: &str,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn count(central: &Central, sql: &str) -> i64 {
    central.pg.psql(sql).trim().parse().unwrap()
}

#[test]
fn the_server_refuses_strangers_and_each_agent_acts_on_its_own_host_only() {
    let test = "the_server_refuses_strangers";
    let Some(central) = Central::start(test, "127.0.0.1", &["127.0.0.1".to_string()]) else {
        return;
    };
    let url = central.url("127.0.0.1");
    let dirs = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let d = dirs.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    // Enrolment: a token works once, for its own host name only.
    let alpha_token = central.enroll_token("alpha");
    let beta_token = central.enroll_token("beta");
    let alpha = enroll(&dir("alpha"), &url, &alpha_token, "alpha").unwrap();
    let reused = enroll(&dir("alpha-again"), &url, &alpha_token, "alpha").unwrap_err();
    assert!(
        format!("{reused:#}").contains("not valid for this host"),
        "{reused:#}"
    );
    let other_name = enroll(&dir("gamma"), &url, &beta_token, "gamma").unwrap_err();
    assert!(
        format!("{other_name:#}").contains("not valid for this host"),
        "{other_name:#}"
    );
    for refused in ["alpha-again", "gamma"] {
        assert!(
            !dirs.path().join(refused).join("server").exists(),
            "a refused enrolment writes nothing"
        );
    }
    // …and the refused attempts did not spend beta's token.
    let beta = enroll(&dir("beta"), &url, &beta_token, "beta").unwrap();
    assert_eq!(
        count(&central, "SELECT COUNT(*) FROM agent_certificates"),
        2
    );
    let log = central.log();
    assert!(log.contains("the token was used already"), "{log}");
    assert!(
        log.contains("the token was made for `beta`, not `gamma`"),
        "{log}"
    );
    // A token whose CA fingerprint is not the server's: no trust, nothing sent.
    let fake = central.enroll_token("delta");
    let (head, _) = fake.rsplit_once('_').unwrap();
    let forged = format!("{head}_{}", "ab".repeat(32));
    let e = enroll(&dir("delta"), &url, &forged, "delta").unwrap_err();
    assert!(
        format!("{e:#}").contains("not the one the token names"),
        "{e:#}"
    );
    let e = enroll(&dir("delta"), &url, "sce1_nonsense", "delta").unwrap_err();
    assert!(
        format!("{e:#}").contains("not one the server printed"),
        "{e:#}"
    );

    // Each agent sees and acts on its own host's jobs only.
    let alpha_client = alpha.client().unwrap();
    let beta_client = beta.client().unwrap();
    let job = central.op_json(&["create", "--host", "beta", "app", "--no-wait", "--json"]);
    let job_id = job["job"]["id"].as_i64().unwrap();
    let (status, next) = call(&alpha_client, "POST", "/v1/agent/jobs/next?wait=1", None).unwrap();
    assert_eq!(
        (status, &next),
        (200, &Value::Null),
        "alpha must not get beta's job"
    );
    for path in [
        format!("/v1/agent/jobs/{job_id}/heartbeat"),
        format!("/v1/agent/jobs/{job_id}/finish"),
    ] {
        let body = if path.ends_with("finish") {
            json!({"ok": true, "result": "forged", "copy_id": 1, "agent_job": 1})
        } else {
            json!({"agent_job": 1})
        };
        let (status, v) = call(&alpha_client, "POST", &path, json_body(body)).unwrap();
        assert_eq!(status, 404, "{path}: {v}");
    }
    assert_eq!(central.job(job_id)["state"], "queued", "nothing changed");
    let (status, got) = call(&beta_client, "POST", "/v1/agent/jobs/next?wait=1", None).unwrap();
    assert_eq!((status, got["id"].as_i64()), (200, Some(job_id)));
    // A copy change naming one copy but carrying another is refused.
    let bad_sync = json!({"version": "x", "changes": [{"seq": 1, "copy_id": 5, "copy": {
        "id": 6, "set": "s", "origin": "create", "provider": "copy", "location": null, "state": "usable",
        "phase": "done", "error": null, "pid": 1, "created_ms": 1, "finished_ms": 1, "freeze_deadline_ms": 1,
        "freeze_window_us": 1, "verify_state": "passed", "files": 1, "bytes": 1}}]});
    let (status, _) = call(&beta_client, "POST", "/v1/agent/sync", json_body(bad_sync)).unwrap();
    assert_eq!(status, 400);

    // Certificates the server did not issue, or that expired, fail the handshake.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "shadowcopy server CA");
    let other_ca = rcgen::Issuer::new(params, rcgen::KeyPair::generate().unwrap());
    let (cert, key) = cert_for("alpha", &other_ca, (2020, 1, 1), (2090, 1, 1));
    let e = call(
        &client_with(&central, &cert, &key),
        "GET",
        "/v1/agent/jobs/open",
        None,
    )
    .unwrap_err();
    assert!(e.contains("TLS") || e.contains("reach"), "{e}");
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(central.state_dir().join("ca/ca.key")).unwrap(),
    )
    .unwrap();
    let server_ca = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(central.state_dir().join("ca/ca.pem")).unwrap(),
        ca_key,
    )
    .unwrap();
    let (cert, key) = cert_for("alpha", &server_ca, (2020, 1, 1), (2021, 1, 1));
    let e = call(
        &client_with(&central, &cert, &key),
        "GET",
        "/v1/agent/jobs/open",
        None,
    )
    .unwrap_err();
    assert!(e.contains("TLS") || e.contains("reach"), "{e}");
    // A certificate the CA signed but the server never issued to an agent.
    let (cert, key) = cert_for("alpha", &server_ca, (2020, 1, 1), (2090, 1, 1));
    let (status, v) = call(
        &client_with(&central, &cert, &key),
        "GET",
        "/v1/agent/jobs/open",
        None,
    )
    .unwrap();
    assert_eq!(status, 403, "{v}");
    // No certificate at all.
    let anonymous = ServerClient::new(
        &url,
        pinned_client_config(sha_of_ca(&central)).unwrap(),
        None,
    )
    .unwrap();
    let (status, _) = call(&anonymous, "GET", "/v1/agent/jobs/open", None).unwrap();
    assert_eq!(status, 401);
    assert!(
        central.log().contains("refused at the TLS handshake"),
        "{}",
        central.log()
    );

    // Revocation cuts beta off at once; its queued jobs are cancelled.
    let queued = central.op_json(&["create", "--host", "beta", "other", "--no-wait", "--json"]);
    central.admin(&["revoke", "beta"]);
    let (status, v) = call(&beta_client, "GET", "/v1/agent/jobs/open", None).unwrap();
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("revoked"),
        "{v}"
    );
    assert_eq!(
        central.job(queued["job"]["id"].as_i64().unwrap())["state"],
        "cancelled"
    );
    let hosts = central.op_json(&["hosts", "--json"]);
    assert!(
        hosts
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "beta" && h["state"] == "revoked"),
        "{hosts:#}"
    );
    let out = central.op(&["create", "--host", "beta", "app", "--no-wait"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // Operators: without a token, with a bad one, below the role a call needs.
    let out = central
        .op_cmd(&["hosts"])
        .env_remove("SHADOWCOPY_SERVER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let wrong = format!("sco1_{}_{}", "00".repeat(24), hex(&sha_of_ca(&central)));
    let out = central
        .op_cmd(&["hosts"])
        .env("SHADOWCOPY_SERVER_TOKEN", &wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown or revoked"),
        "{}",
        describe(&out)
    );
    let viewer = central.admin(&["token", "create", "watcher", "--role", "viewer", "-q"]);
    let out = central
        .op_cmd(&["restore", "--host", "alpha", "1", "--no-wait"])
        .env("SHADOWCOPY_SERVER_TOKEN", viewer.trim())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs the operator role"),
        "{}",
        describe(&out)
    );
    let out = central
        .op_cmd(&["hosts", "--json"])
        .env("SHADOWCOPY_SERVER_TOKEN", viewer.trim())
        .output()
        .unwrap();
    assert!(out.status.success(), "a viewer reads: {}", describe(&out));
    central.admin(&["token", "revoke", "watcher"]);
    let out = central
        .op_cmd(&["hosts"])
        .env("SHADOWCOPY_SERVER_TOKEN", viewer.trim())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a revoked token is refused: {}",
        describe(&out)
    );

    // A policy with a schedule that does not parse is refused; nothing is recorded.
    let out = central.op(&[
        "policy",
        "set",
        "--host",
        "alpha",
        "app",
        "--schedule",
        "every hour",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a cron expression"),
        "{}",
        describe(&out)
    );
    assert_eq!(count(&central, "SELECT COUNT(*) FROM set_policies"), 0);
    assert_eq!(
        count(
            &central,
            "SELECT policy_version FROM hosts WHERE name = 'alpha'"
        ),
        0
    );

    // Malformed and oversized requests get clear errors.
    let admin = operator_client(&url, &central.admin_token).unwrap();
    let (status, v) = call(&admin, "POST", "/v1/hosts/alpha/jobs", Some(b"{".to_vec())).unwrap();
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a valid request"),
        "{v}"
    );
    let (status, v) = call(
        &admin,
        "POST",
        "/v1/hosts/alpha/jobs",
        json_body(json!({"request": {"kind": "create", "set": "a"}, "extra": 1})),
    )
    .unwrap();
    assert_eq!(status, 400, "{v}");
    let (status, v) = call(
        &anonymous,
        "POST",
        "/v1/enroll",
        // Over the 64 KiB limit, small enough that the whole body is sent before the
        // server answers (a larger one can still be in flight when it closes).
        Some(vec![b' '; 70 * 1024]),
    )
    .unwrap();
    assert_eq!(status, 413, "{v}");
    let (status, _) = call(&admin, "GET", "/v1/nothing", None).unwrap();
    assert_eq!(status, 404);

    // A flood of enrolments with made-up tokens: each refused, then the address is
    // turned away (429) until a minute has passed; enrolled agents go on working.
    let mut refused = 0;
    let turned_away = loop {
        let (status, v) = call(
            &anonymous,
            "POST",
            "/v1/enroll",
            json_body(json!({
                "host": format!("flood{refused}"),
                "token": format!("sce1_{refused:048}"),
                "csr_pem": "not a CSR",
            })),
        )
        .unwrap();
        if status != 403 {
            break (status, v);
        }
        refused += 1;
        assert!(refused <= 10, "still refused one by one after 10");
    };
    assert_eq!(turned_away.0, 429, "{}", turned_away.1);
    assert!(
        turned_away.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too many refused enrolments"),
        "{}",
        turned_away.1
    );
    assert!(refused >= 8, "turned away after only {refused}");
    let (status, v) = call(&alpha_client, "GET", "/v1/agent/jobs/open", None).unwrap();
    assert_eq!(status, 200, "{v}");

    // The audit log has the revocation, who made it, and the enrolments.
    let (status, audit) = call(&admin, "GET", "/v1/audit", None).unwrap();
    assert_eq!(status, 200);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for action in [
        "revoke",
        "enroll",
        "enroll-token",
        "token-create",
        "token-revoke",
    ] {
        assert!(actions.contains(&action), "{action} missing: {audit:#}");
    }
    // Nothing secret in the catalog: tokens only as hashes.
    let dump = central
        .pg
        .psql("SELECT string_agg(encode(secret_hash, 'hex'), ',') FROM operator_tokens");
    assert!(!dump.contains(central.admin_token.split('_').nth(1).unwrap()));
    let _ = Identity::load(&dir("alpha")).unwrap().unwrap();
}

fn sha_of_ca(central: &Central) -> [u8; 32] {
    let der = CertificateDer::from_pem_file(central.state_dir().join("ca/ca.pem")).unwrap();
    shadowcopy_agent::link::identity::sha256(der.as_ref())
}

fn hex(b: &[u8]) -> String {
    shadowcopy_agent::link::identity::hex(b)
}
