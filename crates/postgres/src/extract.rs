//! Rows pulled out of an exposed copy (a paused hot standby, `sandbox::expose_copy`):
//! PostgreSQL's own `COPY ... TO STDOUT`, as CSV with a header, or as the data section
//! `pg_dump --data-only --table` writes (`COPY table (columns) FROM stdin;`, the rows,
//! `\.`), which `psql` loads into production as it is. A table that is not there is
//! refused with the names that come closest.

use std::io::Write;

use postgres::{Client, NoTls};
use shadowcopy_core::extract::{no_such_table, ExtractFormat, ExtractRequest};
use shadowcopy_core::writer::Exposed;
use shadowcopy_core::BoxError;

/// Writes the rows `request` names from the standby `exposed` serves into `out`.
pub fn extract(
    exposed: &Exposed,
    user: &str,
    request: &ExtractRequest,
    out: &mut dyn Write,
) -> Result<(), BoxError> {
    let database = request.database.as_deref().unwrap_or("postgres");
    let mut client = postgres::Config::new()
        .host_path(&exposed.address)
        .port(exposed.port.unwrap_or(crate::sandbox::SANDBOX_PORT))
        .user(user)
        .dbname(database)
        .application_name("shadowcopy extract")
        .connect(NoTls)
        .map_err(|e| format!("cannot connect to the exposed copy's database {database:?}: {e}"))?;
    let table = resolve(&mut client, &request.table, database)?;
    let columns: Vec<String> = client
        .query(
            "SELECT quote_ident(attname) FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
             ORDER BY attnum",
            &[&table],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let columns = columns.join(", ");
    let filter = request
        .filter
        .as_deref()
        .map(|f| format!(" WHERE {f}"))
        .unwrap_or_default();
    let select = format!("SELECT {columns} FROM {table}{filter}");
    let copy = match request.format {
        ExtractFormat::Csv => format!("COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER)"),
        ExtractFormat::Sql => format!("COPY ({select}) TO STDOUT"),
    };
    if request.format == ExtractFormat::Sql {
        writeln!(
            out,
            "-- rows of {table} from a shadowcopy copy{}; load with psql",
            request
                .filter
                .as_deref()
                .map(|f| format!(" where {f}"))
                .unwrap_or_default()
        )?;
        writeln!(out, "COPY {table} ({columns}) FROM stdin;")?;
    }
    let mut reader = client
        .copy_out(copy.as_str())
        .map_err(|e| format!("the copy refused `{select}`: {e}"))?;
    std::io::copy(&mut reader, out)?;
    if request.format == ExtractFormat::Sql {
        writeln!(out, "\\.")?;
    }
    out.flush()?;
    Ok(())
}

/// The table's name as PostgreSQL quotes it, or an error listing the closest names.
fn resolve(client: &mut Client, table: &str, database: &str) -> Result<String, BoxError> {
    let found: Option<String> = client
        .query_one("SELECT to_regclass($1::text)::text", &[&table])
        .ok()
        .and_then(|r| r.get(0));
    if let Some(found) = found {
        return Ok(found);
    }
    let names: Vec<String> = client
        .query(
            "SELECT CASE WHEN schemaname = 'public' THEN quote_ident(tablename)
                         ELSE quote_ident(schemaname) || '.' || quote_ident(tablename) END
             FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Err(no_such_table(table, &format!("database {database:?}"), &names).into())
}
