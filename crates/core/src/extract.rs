//! What `extract` asks of an exposed copy (`Writer::extract`): a table, a condition on
//! its rows, a format; and the error for a table that is not there, which names the
//! closest ones.

/// The rows `extract` pulls out of an exposed copy.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ExtractRequest {
    /// The table (`schema.table` for PostgreSQL).
    pub table: String,
    /// A condition on its rows (SQL), all rows when `None`.
    pub filter: Option<String>,
    pub format: ExtractFormat,
    /// PostgreSQL: the database holding the table (default `postgres`).
    pub database: Option<String>,
}

/// How extracted rows are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtractFormat {
    /// Statements the database's own client loads into production (`psql`, `sqlite3`).
    Sql,
    /// CSV with a header line.
    Csv,
}

/// "no table T in WHERE; the closest: a, b, c", the names ranked by edit distance.
pub fn no_such_table(table: &str, place: &str, names: &[String]) -> String {
    let wanted = table.to_lowercase();
    let mut ranked: Vec<(usize, &String)> = names
        .iter()
        .map(|n| (edit_distance(&wanted, &n.to_lowercase()), n))
        .collect();
    ranked.sort();
    let closest: Vec<&str> = ranked.iter().take(5).map(|(_, n)| n.as_str()).collect();
    if closest.is_empty() {
        format!("there is no table {table:?} in {place}, which holds no tables")
    } else {
        format!(
            "there is no table {table:?} in {place}; the closest: {}",
            closest.join(", ")
        )
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_table_is_named_with_the_closest_ones() {
        let names: Vec<String> = ["ledger", "accounts", "audit.ledger_old", "pgbench_history"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = no_such_table("legder", "database \"postgres\"", &names);
        assert!(
            e.starts_with(
                "there is no table \"legder\" in database \"postgres\"; the closest: ledger,"
            ),
            "{e}"
        );
        assert!(no_such_table("x", "the file", &[]).contains("holds no tables"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
