//! The SQLite bank workload.
