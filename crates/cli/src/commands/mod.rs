//! One module per subcommand: its arguments (clap derive, the engine's options
//! flattened in), its `run` (call the engine) and how it prints the report.

pub mod agent;
pub mod archive;
pub mod create;
pub mod delete;
pub mod expose;
pub mod list;
pub mod mariadb;
pub mod pg;
pub mod policy;
pub mod providers;
pub mod quickstart;
pub mod remote;
pub mod restore;
pub mod server;
pub mod show;
pub mod verify;
pub mod writers;
