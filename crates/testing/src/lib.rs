//! `shadowcopy-testing`: what the tests of every crate share: loop-device file systems,
//! the SQLite bank workload, and the provider conformance suite.

pub mod bank;
pub mod loopfs;
pub mod provider_suite;
