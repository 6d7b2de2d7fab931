//! Opening the files that options name, so that no thread of ours, and no library that reads
//! them after us, can hang on one.
//!
//! A FIFO, a device or a pseudo file such as `/proc/kmsg` blocks whoever reads it: Valkey's
//! main thread on `CONFIG SET`, or a worker whose TLS library loads a CA file. Only regular
//! files with content pass; `/proc` files all report a length of zero, so they never do.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `O_NONBLOCK` (Linux): the open itself must not wait for a FIFO's writer.
const O_NONBLOCK: i32 = 0o4000;

/// Opens a regular file without blocking on whatever else the path may name.
pub fn open_regular_file(options: &mut fs::OpenOptions, path: &Path) -> Result<fs::File, String> {
    let shown = path.display();
    let file = options
        .custom_flags(O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open '{shown}': {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read '{shown}': {e}"))?;
    if !meta.is_file() {
        return Err(format!("'{shown}' is not a regular file"));
    }
    Ok(file)
}

/// Checks a file that another library will open and read with blocking calls (a TLS
/// certificate or key, a keytab): readable, regular and not empty. Returns its metadata.
pub fn library_input(path: &Path) -> Result<fs::Metadata, String> {
    let meta = open_regular_file(fs::OpenOptions::new().read(true), path)?
        .metadata()
        .map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
    if meta.len() == 0 {
        return Err(format!("'{}' is empty", path.display()));
    }
    Ok(meta)
}

/// Checks a CA directory whose every entry the TLS library will read: each one, following
/// links, must be a directory or a regular file with content. Links that lead nowhere are
/// skipped, as the TLS library skips them. Returns the entries' metadata in name order.
pub fn library_input_dir(dir: &Path) -> Result<Vec<fs::Metadata>, String> {
    let shown = dir.display();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot read '{shown}': {e}"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    entries.sort();
    let mut found = Vec::with_capacity(entries.len());
    for entry in &entries {
        let Ok(meta) = fs::metadata(entry) else {
            continue;
        };
        let has_content = meta.is_file() && meta.len() > 0;
        if !meta.is_dir() && !has_content {
            return Err(format!(
                "'{shown}' holds '{}', which is not a regular file with content",
                entry.display()
            ));
        }
        found.push(meta);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("valkeyauth-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn only_regular_files_with_content_pass() {
        let dir = scratch("inputs");
        let ca = dir.join("ca.pem");
        fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        assert_eq!(library_input(&ca).unwrap().len(), 28);
        let empty = dir.join("empty.pem");
        fs::write(&empty, "").unwrap();
        assert!(library_input(&empty).unwrap_err().contains("is empty"));
        assert!(library_input(&dir.join("missing")).is_err());
        assert!(library_input(&dir)
            .unwrap_err()
            .contains("not a regular file"));
        for pseudo in ["/proc/self/status", "/proc/kmsg", "/dev/null"] {
            assert!(library_input(Path::new(pseudo)).is_err(), "{pseudo}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ca_directory_holds_only_files_with_content() {
        let dir = scratch("cadir");
        fs::write(dir.join("a.pem"), "x").unwrap();
        std::os::unix::fs::symlink(dir.join("a.pem"), dir.join("1234abcd.0")).unwrap();
        std::os::unix::fs::symlink(dir.join("gone.pem"), dir.join("dangling.0")).unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        assert_eq!(library_input_dir(&dir).unwrap().len(), 3);

        let socket = UnixListener::bind(dir.join("s.sock")).unwrap();
        let err = library_input_dir(&dir).unwrap_err();
        assert!(err.contains("s.sock"), "{err}");
        drop(socket);
        fs::remove_file(dir.join("s.sock")).unwrap();

        std::os::unix::fs::symlink("/proc/self/status", dir.join("p.0")).unwrap();
        assert!(library_input_dir(&dir).unwrap_err().contains("p.0"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
