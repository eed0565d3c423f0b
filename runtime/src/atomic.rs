//! Atomic file writes: the bytes go to `.{file name}.tmp-{pid}` in the same directory, are
//! synced to disk, and the temporary file is renamed over the target, so a reader (or a
//! crash) sees the old file or the new one, never half of one. On failure the temporary
//! file is removed and the target is untouched. Two threads of one process must not write
//! the same path at once: they would share the temporary name.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let written = write_synced(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        // Best effort: the temporary file may not even have been created.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable. The new file is already complete and in place, so a
    // failure here (some filesystems refuse to sync directories) loses nothing that an
    // error could help with.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
