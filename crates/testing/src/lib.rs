//! `shadowcopy-testing`: what the tests of every crate share: loop-device file systems,
//! the sample bank workload, fault-injecting wrappers for the failure paths a real
//! service cannot be made to produce, the provider and writer conformance suites, and
//! bounded waits for a condition ([`wait`]) in place of sleeps.

pub mod faults;
pub mod ledger;
pub mod loopfs;
pub mod mariadb;
pub mod netns;
pub mod pgbench;
pub mod postgres;
pub mod provider_suite;
pub mod s3;
pub mod server_process;
pub mod wait;
pub mod writer_suite;

pub use shadowcopy_sample as bank;
