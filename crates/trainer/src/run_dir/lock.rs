//! One writer per stage directory: an advisory lock file holding the writer's pid, host and start.
//!
//! The file is locked with `flock` for as long as the writer runs (the kernel drops that lock when
//! the process dies) and holds a JSON description of the holder for the error a second writer gets.
//! A lock file left by a process that is gone (same host, no `/proc/<pid>`, or a `/proc/<pid>` of
//! another process that reused the pid) is taken over with a message. A holder on another host is
//! never guessed dead: the file must then be removed by hand.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Error, Result};

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// When the process took the lock (RFC 3339).
    pub started: String,
    /// The process's start time in clock ticks after boot (`/proc/<pid>/stat`), telling a reused
    /// pid from the holder.
    pub proc_start: Option<u64>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on host {} (since {})",
            self.pid, self.host, self.started
        )
    }
}

/// This host's name.
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Start time of process `pid` in clock ticks after boot, where `/proc` tells it.
fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the parenthesised command name; the start time is field 22 overall
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Holder {
    fn me() -> Self {
        let pid = std::process::id();
        Holder {
            pid,
            host: host_name(),
            started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            proc_start: proc_start(pid),
        }
    }

    /// Whether the holder is known to be gone: same host, and no such process or another one
    /// under its pid.
    fn is_stale(&self) -> bool {
        if self.host != host_name() {
            return false;
        }
        match slimflow_tensor_io::pid_alive(self.pid) {
            Some(false) => true,
            Some(true) => match (self.proc_start, proc_start(self.pid)) {
                (Some(a), Some(b)) => a != b,
                _ => false,
            },
            None => false,
        }
    }
}

/// A held stage lock; released (and its file removed) on drop.
#[derive(Debug)]
pub struct StageLock {
    path: PathBuf,
    file: Option<Flock<File>>,
}

impl StageLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock `path` for this process: an error naming the holder when another live
    /// writer holds it; a stale one is taken over with a warning.
    pub fn acquire(path: &Path) -> Result<StageLock> {
        // the file may be removed by its releasing holder between our open and our lock: retry
        for _ in 0..8 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io_err(path))?;
            let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((file, Errno::EWOULDBLOCK)) => {
                    let holder = read_holder(file)
                        .map(|h| h.to_string())
                        .unwrap_or_else(|| "another process".into());
                    return Err(Error::Locked {
                        path: path.to_path_buf(),
                        holder,
                    });
                }
                Err((_, errno)) => {
                    return Err(Error::Io {
                        path: path.to_path_buf(),
                        source: std::io::Error::from(errno),
                    })
                }
            };
            let same = match (locked.metadata(), std::fs::metadata(path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            if let Some(old) = read_holder(&*locked) {
                let me = Holder::me();
                if old.pid != me.pid || old.host != me.host {
                    if !old.is_stale() {
                        // unlocked, yet its holder may live (another host, or flock not shared)
                        return Err(Error::Locked {
                            path: path.to_path_buf(),
                            holder: format!(
                                "{old}; if that process is gone, remove {}",
                                path.display()
                            ),
                        });
                    }
                    tracing::warn!(
                        "{}: taking over the stale lock of {old} (no longer running)",
                        path.display()
                    );
                }
            }
            let text = serde_json::to_string(&Holder::me()).expect("holders serialise");
            locked
                .set_len(0)
                .and_then(|_| locked.seek(SeekFrom::Start(0)))
                .and_then(|_| locked.write_all(format!("{text}\n").as_bytes()))
                .and_then(|_| locked.sync_all())
                .map_err(io_err(path))?;
            return Ok(StageLock {
                path: path.to_path_buf(),
                file: Some(locked),
            });
        }
        Err(Error::Locked {
            path: path.to_path_buf(),
            holder: "writers that keep replacing the lock file".into(),
        })
    }
}

fn read_holder(mut file: impl Read + Seek) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

impl Drop for StageLock {
    fn drop(&mut self) {
        // removed while still locked, so a waiting writer never locks a file that is gone
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_and_the_lock_is_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let first = StageLock::acquire(&path).unwrap();
        let err = StageLock::acquire(&path).unwrap_err().to_string();
        assert!(err.contains(".lock"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(!path.exists());
        let again = StageLock::acquire(&path).unwrap();
        assert_eq!(again.path(), path);
    }

    #[test]
    fn stale_locks_are_taken_over_and_foreign_hosts_are_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let mut dead = Holder::me();
        dead.pid = 4_999_999; // above any pid_max
        std::fs::write(&path, serde_json::to_string(&dead).unwrap()).unwrap();
        if slimflow_tensor_io::pid_alive(1).is_some() {
            let lock = StageLock::acquire(&path).unwrap();
            let now: Holder =
                serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
            assert_eq!(now.pid, std::process::id());
            drop(lock);
        }
        let mut foreign = Holder::me();
        foreign.pid = 4_999_999;
        foreign.host = "elsewhere.invalid".into();
        std::fs::write(&path, serde_json::to_string(&foreign).unwrap()).unwrap();
        let err = StageLock::acquire(&path).unwrap_err().to_string();
        assert!(err.contains("elsewhere.invalid"), "{err}");
    }
}
