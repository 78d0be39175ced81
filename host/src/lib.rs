//! Keel host library.
