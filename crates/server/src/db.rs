//! The central catalog's connection pool and its schema migrations (the SQL files in
//! `crates/server/migrations`, applied in order at start, each once, under an advisory
//! lock so that servers starting together do not race).

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use shadowcopy_engine::UsageError;

/// The migrations, in order; `schema_migrations` records which ran.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_central_catalog.sql")),
    (2, include_str!("../migrations/0002_set_policies.sql")),
    (3, include_str!("../migrations/0003_console.sql")),
    (4, include_str!("../migrations/0004_host_reports.sql")),
];

/// Any number that no other user of the database would take as an advisory lock.
const MIGRATION_LOCK: i64 = 0x5348_4443_4f50_5901;

/// A pool on the database `url` names (libpq URL or key=value settings). The password,
/// if the URL has one, never reaches a log or an error.
pub fn pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
        UsageError::new(format!(
            "the database URL does not parse ({e}); write it as postgresql://USER@HOST:PORT/DB or postgresql:///DB?host=/run/postgresql"
        ))
    })?;
    config.connect_timeout(Duration::from_secs(10));
    config.application_name("shadowcopy-server");
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        // Short queries only: the JIT would compile for 150 ms what runs in 15 (a small
        // table whose statistics overestimate it is enough to trigger it). Set on each
        // new connection rather than as a startup option, which poolers refuse.
        .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
            Box::pin(async move {
                client
                    .batch_execute("SET jit = off")
                    .await
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }))
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(15)))
        .create_timeout(Some(Duration::from_secs(15)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}

/// Applies the migrations the database lacks; refuses a database newer than this server.
pub async fn migrate(pool: &Pool) -> anyhow::Result<()> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the central catalog's database: {e}"))?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Looked up first rather than `CREATE TABLE IF NOT EXISTS`, whose notice would be
    // logged at every start.
    let exists: bool = tx
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        tx.batch_execute(
            "CREATE TABLE schema_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    }
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if found > known {
        anyhow::bail!(
            "the central catalog has schema {found}, newer than this server knows ({known}); run the newer shadowcopy server"
        );
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| anyhow::anyhow!("migration {version} failed: {e}"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "central catalog migrated");
    }
    tx.commit().await?;
    Ok(())
}
