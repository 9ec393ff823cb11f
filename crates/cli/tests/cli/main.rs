//! End-to-end tests of the `shadowcopy` binary: what a user types, what they see, the
//! exit codes, and what is (or is not) left on disk.

mod agent;
mod agent_api;
mod archive;
mod bad_input;
mod btrfs_restore;
mod catalog;
mod central;
mod commands;
mod console;
mod crash;
mod exec_provider;
mod expose;
mod expose_until;
mod fsfreeze;
mod hooks;
mod hostile_input;
mod incremental_verify;
mod mariadb;
mod multivolume;
mod postgres;
mod postgres_aborts;
mod postgres_incremental;
mod postgres_layout;
mod postgres_wal;
mod queue;
mod quickstart;
mod restore_safety;
mod retention;
mod secrets;
mod server;
mod server_attacks;
mod support;
mod verify;
