//! Where the MariaDB (or MySQL) programs are: the PATH, then `/usr/sbin` (where
//! `mariadbd` lives) and `/usr/bin`. MariaDB's names first, MySQL's as a fallback.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("{program} is not installed (looked in PATH, /usr/sbin, /usr/bin and /usr/local/bin); install the MariaDB server and client packages (apt-get install mariadb-server mariadb-client)")]
pub struct MissingProgram {
    pub program: String,
}

/// The MariaDB program `name` (`mariadbd`, `mariadb`, `mariadb-check`, `mariadb-binlog`),
/// or its MySQL counterpart (`mysqld`, `mysql`, `mysqlcheck`, `mysqlbinlog`).
pub fn program(name: &str) -> Result<PathBuf, MissingProgram> {
    let fallback = match name {
        "mariadbd" => Some("mysqld"),
        "mariadb" => Some("mysql"),
        "mariadb-check" => Some("mysqlcheck"),
        "mariadb-binlog" => Some("mysqlbinlog"),
        "mariadb-dump" => Some("mysqldump"),
        _ => None,
    };
    std::iter::once(name)
        .chain(fallback)
        .find_map(find)
        .ok_or_else(|| MissingProgram {
            program: name.to_string(),
        })
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
