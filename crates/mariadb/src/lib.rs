//! MariaDB (and MySQL) support for shadowcopy: the `mariadb` writer. Discovery of a
//! running server, the freeze (BACKUP STAGE on MariaDB, LOCK INSTANCE FOR BACKUP plus
//! FLUSH TABLES WITH READ LOCK on MySQL) on a connection the server releases when it
//! goes, the binlog position stored in each copy, verification on a sandbox server,
//! binlog truncation after a verified copy, point-in-time and roll-forward restores, and
//! the analysis of a copy's binlog chain (`log_analysis`).

pub mod bin;
pub mod binlog_files;
pub mod elsewhere;
mod expose;
pub mod extract;
mod files;
mod instance;
pub mod lock;
pub mod log_analysis;
pub mod position;
mod replay;
pub mod restore;
pub mod retention;
mod sandbox;
pub mod server;
pub mod until;
pub mod writer;

pub use server::{MariaDbOptions, ServerLayout};
pub use writer::MariaDbWriter;
