//! Integration tests across crates; see the files under tests/tests/.
