//! Helpers shared by the cross-crate and end-to-end tests in `tests/tests/`.

use std::path::PathBuf;

/// `tests/fixtures`: the committed tiny checkpoints and reference outputs.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The directory `scripts/fetch-assets` fills (`$KESTREL_ASSETS`, default
/// `${XDG_CACHE_HOME:-~/.cache}/kestrel/assets`). Tests that need it fail, naming the script, when
/// it is missing: an asset test never skips silently.
pub fn assets() -> PathBuf {
    let dir = std::env::var_os("KESTREL_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                });
            cache.join("kestrel/assets")
        });
    assert!(
        dir.is_dir(),
        "test assets missing at {}: run scripts/fetch-assets",
        dir.display()
    );
    dir
}
