//! Opening the files that options name, so that no thread of ours, and no library that reads
//! them after us, can hang on one.
//!
//! A FIFO, a device or a pseudo file such as `/proc/kmsg` blocks whoever reads it: Valkey's
//! main thread on `CONFIG SET`, or a worker whose TLS library loads a CA file. Only regular
//! files pass, and none under `/proc` or `/sys`, where writing can change the kernel's
//! settings (as root) and reading can block.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `O_NONBLOCK` (Linux): the open itself must not wait for a FIFO's writer.
const O_NONBLOCK: i32 = 0o4000;

/// Where the kernel's interfaces are mounted; nothing there is a file of ours.
const KERNEL_INTERFACES: &[&str] = &["/proc", "/sys"];

/// Refuses a path that resolves (links followed) into [`KERNEL_INTERFACES`], and a link that
/// leads nowhere: opening one to create a file would create its target, wherever that is. A
/// path that does not exist yet is judged by its directory.
pub fn refuse_kernel_interface(path: &Path) -> Result<(), String> {
    let real = match fs::canonicalize(path) {
        Ok(real) => real,
        Err(_) if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) => {
            return Err(format!("'{}' is a link that leads nowhere", path.display()));
        }
        Err(_) => match path.parent().map(fs::canonicalize) {
            Some(Ok(dir)) => dir,
            // The open that follows says what is wrong.
            _ => return Ok(()),
        },
    };
    match KERNEL_INTERFACES.iter().find(|root| real.starts_with(root)) {
        Some(root) => Err(format!(
            "'{}' is under {root}, a kernel interface, not a file",
            path.display()
        )),
        None => Ok(()),
    }
}

/// Opens a regular file without blocking on whatever else the path may name.
pub fn open_regular_file(options: &mut fs::OpenOptions, path: &Path) -> Result<fs::File, String> {
    refuse_kernel_interface(path)?;
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
/// links, must be a directory or a regular file with content, and no link may lead into
/// [`KERNEL_INTERFACES`]. Links that lead nowhere are skipped, as the TLS library skips them.
/// Returns the entries' metadata in name order.
pub fn library_input_dir(dir: &Path) -> Result<Vec<fs::Metadata>, String> {
    refuse_kernel_interface(dir)?;
    let shown = dir.display();
    let mut entries: Vec<(PathBuf, bool)> = fs::read_dir(dir)
        .map_err(|e| format!("cannot read '{shown}': {e}"))?
        .filter_map(Result::ok)
        .map(|entry| {
            let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
            (entry.path(), is_link)
        })
        .collect();
    entries.sort();
    let mut found = Vec::with_capacity(entries.len());
    for (entry, is_link) in &entries {
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
        if *is_link {
            refuse_kernel_interface(entry)?;
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
        for pseudo in [
            "/proc/self/status",
            "/proc/kmsg",
            "/dev/null",
            "/sys/kernel/mm/transparent_hugepage/enabled",
        ] {
            assert!(library_input(Path::new(pseudo)).is_err(), "{pseudo}");
        }
        let err = library_input(Path::new("/proc/self/status")).unwrap_err();
        assert!(err.contains("kernel interface"), "{err}");
        // Also for a file to be created, as an audit file.
        let mut append = fs::OpenOptions::new();
        append.append(true).create(true);
        assert!(open_regular_file(&mut append, Path::new("/proc/self/new.log")).is_err());
        // A link to nothing would create its target.
        let dangling = dir.join("dangling.log");
        let target = dir.join("elsewhere.log");
        std::os::unix::fs::symlink(&target, &dangling).unwrap();
        let err = open_regular_file(&mut append, &dangling).unwrap_err();
        assert!(err.contains("leads nowhere"), "{err}");
        assert!(!target.exists());
        let link = dir.join("status-link");
        std::os::unix::fs::symlink("/proc/self/status", &link).unwrap();
        assert!(library_input(&link)
            .unwrap_err()
            .contains("kernel interface"));
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
        fs::remove_file(dir.join("p.0")).unwrap();
        // A sysfs file reports a length of 4096: only where it leads gives it away.
        let sysfs = Path::new("/sys/kernel/mm/transparent_hugepage/enabled");
        if sysfs.exists() {
            std::os::unix::fs::symlink(sysfs, dir.join("s.0")).unwrap();
            let err = library_input_dir(&dir).unwrap_err();
            assert!(err.contains("kernel interface"), "{err}");
        }
        assert!(library_input_dir(Path::new("/proc/self")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
