//! Transport unit tests.
