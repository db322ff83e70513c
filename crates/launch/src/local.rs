//! `--nproc-per-node N`: N workers on this machine, started with the torchrun contract and
//! supervised: when one fails, the others get a grace period to fail on their own (their
//! collectives time out and name the rank), then SIGTERM, then SIGKILL.

use std::ffi::OsString;
use std::fmt;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{Error, Result};

/// N local workers of one program.
#[derive(Debug, Clone)]
pub struct LocalJob {
    /// Workers to start (one device each).
    pub nproc: usize,
    /// The program (usually the current executable).
    pub program: PathBuf,
    /// Its arguments (without the option that asked for local workers).
    pub args: Vec<OsString>,
    /// Rendezvous port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// How long the others may take to stop by themselves after one fails.
    pub grace: Duration,
}

/// The first worker that failed, and what became of the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFailure {
    /// Its rank.
    pub rank: usize,
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// How it ended, in words.
    pub status: String,
    /// Ranks that had to be stopped after the grace period.
    pub stopped: Vec<usize>,
}

impl fmt::Display for WorkerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker rank {} {}", self.rank, self.status)?;
        if !self.stopped.is_empty() {
            let r: Vec<String> = self.stopped.iter().map(|r| r.to_string()).collect();
            write!(f, "; ranks {} were stopped", r.join(", "))?;
        }
        Ok(())
    }
}

fn describe(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended".into(),
    }
}

/// A TCP port free on 127.0.0.1 at the time of asking.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn signal_all(children: &mut [(usize, Child)], sig: Signal) {
    for (_, c) in children.iter() {
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

/// Starts the workers with `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`
/// and `MASTER_PORT` set, and waits for all of them. `stop` is polled: when it turns true (the
/// launcher was interrupted) the workers get SIGTERM, which they answer by checkpointing.
/// `Ok` when every worker exited with code 0.
pub fn spawn_local(job: &LocalJob, stop: &dyn Fn() -> bool) -> Result<()> {
    let port = match job.port {
        0 => free_port().map_err(|source| Error::Spawn { rank: 0, source })?,
        p => p,
    };
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(job.nproc);
    for rank in 0..job.nproc {
        let child = Command::new(&job.program)
            .args(&job.args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", job.nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", job.nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(source) => {
                signal_all(&mut children, Signal::SIGKILL);
                for (_, c) in children.iter_mut() {
                    let _ = c.wait();
                }
                return Err(Error::Spawn { rank, source });
            }
        }
    }
    let mut failure: Option<(WorkerFailure, Instant)> = None;
    let mut termed: Option<Instant> = None;
    let mut interrupted = false;
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            let (rank, child) = &mut children[i];
            match child.try_wait() {
                Ok(Some(status)) => {
                    let rank = *rank;
                    children.remove(i);
                    if !status.success() && failure.is_none() {
                        let f = WorkerFailure {
                            rank,
                            code: status.code(),
                            status: describe(status),
                            stopped: Vec::new(),
                        };
                        failure = Some((f, Instant::now()));
                    }
                }
                Ok(None) => i += 1,
                Err(source) => {
                    let rank = *rank;
                    signal_all(&mut children, Signal::SIGKILL);
                    return Err(Error::Spawn { rank, source });
                }
            }
        }
        if !interrupted && stop() {
            interrupted = true;
            signal_all(&mut children, Signal::SIGTERM);
        }
        if let Some((f, since)) = failure.as_mut() {
            if termed.is_none() && since.elapsed() > job.grace {
                f.stopped = children.iter().map(|c| c.0).collect();
                signal_all(&mut children, Signal::SIGTERM);
                termed = Some(Instant::now());
            }
        }
        if termed.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            signal_all(&mut children, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failure {
        Some((f, _)) => Err(Error::Worker(f)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, nproc: usize, grace: Duration) -> Result<()> {
        let job = LocalJob {
            nproc,
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            port: 0,
            grace,
        };
        spawn_local(&job, &|| false)
    }

    #[test]
    fn workers_get_the_torchrun_contract() {
        let dir = std::env::temp_dir().join(format!("launch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "echo $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR > {}/$RANK; \
             test -n \"$MASTER_PORT\"",
            dir.display()
        );
        sh(&script, 3, Duration::from_secs(5)).unwrap();
        for r in 0..3 {
            let line = std::fs::read_to_string(dir.join(r.to_string())).unwrap();
            assert_eq!(line.trim(), format!("{r} 3 {r} 3 127.0.0.1"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failing_worker_is_named_and_the_others_are_stopped_after_the_grace() {
        let start = Instant::now();
        let e = sh(
            "if [ $RANK = 1 ]; then exit 3; fi; sleep 60",
            3,
            Duration::from_millis(500),
        )
        .unwrap_err();
        let Error::Worker(f) = &e else { panic!("{e}") };
        assert_eq!((f.rank, f.code), (1, Some(3)));
        assert_eq!(f.stopped, [0, 2]);
        assert_eq!(
            e.to_string(),
            "worker rank 1 exited with code 3; ranks 0, 2 were stopped"
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_killed_worker_is_reported_by_its_signal() {
        let e = sh(
            "if [ $RANK = 0 ]; then kill -9 $$; fi; exit 0",
            2,
            Duration::from_secs(5),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "worker rank 0 was killed by signal 9");
    }
}
