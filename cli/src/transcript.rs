//! Transcripts: JSON Lines written as things happen, each line flushed at once, so that an
//! interrupted or failed run keeps everything up to the moment it ended.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// An open transcript file.
pub(crate) struct Transcript(std::io::BufWriter<std::fs::File>);

impl Transcript {
    /// Creates the file at `path`, if one is asked for.
    pub(crate) fn create(path: Option<&Path>) -> anyhow::Result<Option<Self>> {
        let Some(path) = path else {
            return Ok(None);
        };
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create the transcript {}", path.display()))?;
        Ok(Some(Self(std::io::BufWriter::new(file))))
    }

    /// Writes one line and flushes it.
    pub(crate) fn line(&mut self, value: &Value) -> std::io::Result<()> {
        writeln!(self.0, "{value}")?;
        self.0.flush()
    }
}
