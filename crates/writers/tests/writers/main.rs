//! Integration tests of the built-in writers driven by the real coordinator, catalog and
//! providers: consistency under a concurrent write load, every abort path, and restore.

mod aborts;
mod conformance;
mod consistency;
mod restore;
mod support;
