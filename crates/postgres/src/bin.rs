//! Where the PostgreSQL programs of a given major version are (Debian's layout,
//! `/usr/lib/postgresql/<major>/bin`, then `PATH`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("{program} of PostgreSQL {major} is not installed (looked in /usr/lib/postgresql/{major}/bin and PATH); install postgresql-{major} (and postgresql-contrib for pg_amcheck)")]
pub struct MissingProgram {
    pub program: String,
    pub major: u32,
}

/// The path of PostgreSQL program `program` for server version `version_num` (150004).
pub fn pg_bin(version_num: u32, program: &str) -> Result<PathBuf, MissingProgram> {
    let major = version_num / 10000;
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/{program}"));
    if debian.is_file() {
        return Ok(debian);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| MissingProgram {
            program: program.to_string(),
            major,
        })
}
