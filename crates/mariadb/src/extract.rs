//! Rows pulled out of an exposed copy (a read-only server, `sandbox::expose_copy`) with
//! MariaDB's own tools: `mariadb-dump --no-create-info --where` (INSERT statements the
//! `mariadb` client loads into production), or CSV with a header made from the
//! `mariadb` client's batch output. A table that is not there is refused with the names
//! that come closest.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use shadowcopy_core::extract::{no_such_table, ExtractFormat, ExtractRequest};
use shadowcopy_core::writer::Exposed;
use shadowcopy_core::{process, BoxError};

use crate::bin;
use crate::instance::clean_env;

const LIMIT: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// A client program connected to the exposed server's socket as root.
fn client(program: &str, socket: &Path) -> Result<Command, BoxError> {
    let mut cmd = Command::new(bin::program(program)?);
    clean_env(&mut cmd);
    cmd.arg("--no-defaults")
        .arg(format!("--socket={}", socket.display()))
        .arg("--user=root");
    Ok(cmd)
}

/// Writes the rows `request` names from the server `exposed` serves into `out`.
/// The table is `db.table`, or `table` in `request.database`.
pub fn extract(
    exposed: &Exposed,
    request: &ExtractRequest,
    out: &mut dyn Write,
) -> Result<(), BoxError> {
    let socket = Path::new(&exposed.address);
    let (database, table) = match request.table.split_once('.') {
        Some((d, t)) => (d.to_string(), t.to_string()),
        None => match &request.database {
            Some(d) => (d.clone(), request.table.clone()),
            None => {
                return Err(format!(
                    "name the table's database: --table DB.{} or --database DB",
                    request.table
                )
                .into())
            }
        },
    };
    // The tables there are, as `db.table`.
    let mut list = client("mariadb", socket)?;
    list.args([
        "--batch",
        "--skip-column-names",
        "-e",
        "SELECT CONCAT(table_schema, '.', table_name) FROM information_schema.tables \
         WHERE table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')",
    ]);
    let listed = process::run_within(&mut list, LIMIT)?;
    if !listed.status.success() {
        return Err(format!(
            "the exposed server did not list its tables: {}",
            listed.stderr.trim()
        )
        .into());
    }
    let names: Vec<String> = listed.stdout.lines().map(str::to_string).collect();
    let wanted = format!("{database}.{table}");
    if !names.iter().any(|n| n == &wanted) {
        return Err(no_such_table(&wanted, "the copy", &names).into());
    }
    let mut cmd = match request.format {
        ExtractFormat::Sql => {
            let mut dump = client("mariadb-dump", socket)?;
            dump.args([
                "--no-create-info",
                "--skip-triggers",
                "--skip-add-locks",
                "--skip-lock-tables",
                "--complete-insert",
                "--compact",
            ]);
            if let Some(f) = &request.filter {
                dump.arg(format!("--where={f}"));
            }
            dump.arg(&database).arg(&table);
            dump
        }
        ExtractFormat::Csv => {
            let quote = |s: &str| format!("`{}`", s.replace('`', "``"));
            let filter = request
                .filter
                .as_deref()
                .map(|f| format!(" WHERE {f}"))
                .unwrap_or_default();
            let mut query = client("mariadb", socket)?;
            query.args([
                "--batch".to_string(),
                "-e".to_string(),
                format!(
                    "SELECT * FROM {}.{}{filter}",
                    quote(&database),
                    quote(&table)
                ),
            ]);
            query
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run the MariaDB client: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let copied: std::io::Result<()> = match request.format {
        ExtractFormat::Sql => {
            let mut reader = stdout;
            std::io::copy(&mut reader, out).map(|_| ())
        }
        ExtractFormat::Csv => batch_to_csv(std::io::BufReader::new(stdout), out),
    };
    let done = child.wait_with_output()?;
    copied?;
    if !done.status.success() {
        return Err(format!(
            "the exposed server refused the query: {}",
            String::from_utf8_lossy(&done.stderr).trim()
        )
        .into());
    }
    out.flush()?;
    Ok(())
}

/// The `mariadb --batch` output (tab-separated, `\t` `\n` `\\` `\0` escaped, `NULL` for
/// null) as CSV: every field quoted when it holds a comma, quote or line break; a null
/// as an empty field.
fn batch_to_csv(input: impl BufRead, out: &mut dyn Write) -> std::io::Result<()> {
    for line in input.split(b'\n') {
        let line = line?;
        let fields: Vec<String> = line
            .split(|&b| b == b'\t')
            .map(|f| {
                if f == b"NULL" {
                    return String::new();
                }
                let text = unescape(f);
                if text.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", text.replace('"', "\"\""))
                } else {
                    text
                }
            })
            .collect();
        writeln!(out, "{}", fields.join(","))?;
    }
    Ok(())
}

fn unescape(field: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(field.len());
    let mut it = field.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            bytes.push(b);
            continue;
        }
        match it.next() {
            Some(b't') => bytes.push(b'\t'),
            Some(b'n') => bytes.push(b'\n'),
            Some(b'0') => bytes.push(0),
            Some(b'\\') => bytes.push(b'\\'),
            Some(&other) => bytes.extend([b'\\', other]),
            None => bytes.push(b'\\'),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_output_becomes_csv() {
        let batch = b"id\tname\tnote\n1\tAnn\tNULL\n2\tB, \"Bo\"\tline\\nbreak\\ttab\n";
        let mut out = Vec::new();
        batch_to_csv(&batch[..], &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id,name,note\n1,Ann,\n2,\"B, \"\"Bo\"\"\",\"line\nbreak\ttab\"\n"
        );
    }
}
