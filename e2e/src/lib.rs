//! End-to-end test support for Tollgate (tests live in `e2e/tests/`).
