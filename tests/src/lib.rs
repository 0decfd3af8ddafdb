//! Workspace-level end-to-end tests (in `tests/tests/`): the libraries
//! together, against reference tools. Tests that drive the `spinel` binary
//! live in `cli/tests/`, the only place Cargo hands them its path.
