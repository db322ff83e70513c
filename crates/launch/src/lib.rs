//! Where this process sits in a multi-process job, read the way PyTorch jobs are launched, and a
//! local launcher that starts N workers itself.
//!
//! - `torchrun` (and any launcher following its contract) sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//!   `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`;
//! - `srun` sets `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_NTASKS_PER_NODE` /
//!   `SLURM_TASKS_PER_NODE` and `SLURM_JOB_NODELIST`; the master is `MASTER_ADDR` when set, else the
//!   first host of the node list, and the port `MASTER_PORT` when set, else
//!   [`slurm_port`] of the job id, so that two jobs sharing a node do not collide;
//! - neither: one process.
//!
//! The torchrun variables win when both are present (torchrun started inside an `srun` task).

mod hostlist;
mod local;

use std::fmt;

pub use hostlist::expand_hostlist;
pub use local::{free_port, spawn_local, LocalJob, WorkerFailure};

/// Errors of reading a launch environment or running local workers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A variable holds a value that cannot be used.
    #[error("{var}={value}: {why}")]
    BadVar {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        why: String,
    },
    /// A variable the launcher should have set is missing.
    #[error("{var} is not set, but {because}")]
    MissingVar {
        /// The variable.
        var: &'static str,
        /// What makes it necessary.
        because: String,
    },
    /// A Slurm node list that cannot be expanded.
    #[error("node list `{0}`: {1}")]
    BadHostlist(String, String),
    /// A worker could not be started or waited for.
    #[error("worker {rank}: {source}")]
    Spawn {
        /// The worker's rank.
        rank: usize,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A worker failed; the others were stopped.
    #[error("{0}")]
    Worker(WorkerFailure),
}

/// A result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Who set the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No launcher: one process.
    Single,
    /// `torchrun` or a launcher with its contract (including [`spawn_local`]).
    Torchrun,
    /// Slurm's `srun`.
    Slurm,
}

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Global rank, 0-based.
    pub rank: usize,
    /// Number of processes in the job.
    pub world: usize,
    /// Rank among the processes on this node (selects the GPU).
    pub local_rank: usize,
    /// Processes on this node.
    pub local_world: usize,
    /// Host of rank 0's rendezvous store.
    pub master_addr: String,
    /// Port of the rendezvous store.
    pub master_port: u16,
    /// Who set the environment.
    pub source: Source,
    /// Whether the launcher itself serves the store at `master_addr:master_port`, so rank 0 joins
    /// it instead of serving one (torchrun's agent: `TORCHELASTIC_USE_AGENT_STORE=True`).
    pub agent_store: bool,
    /// How often the launcher restarted the job (`TORCHELASTIC_RESTART_COUNT`), to keep one
    /// attempt's keys in a launcher's store apart from the next.
    pub attempt: usize,
}

impl fmt::Display for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            Source::Single => f.write_str("one process"),
            s => write!(
                f,
                "rank {} of {} (local {} of {}, {}), store {}:{}",
                self.rank,
                self.world,
                self.local_rank,
                self.local_world,
                if s == Source::Slurm {
                    "srun"
                } else {
                    "torchrun"
                },
                self.master_addr,
                self.master_port
            ),
        }
    }
}

/// The port a Slurm job uses when `MASTER_PORT` is not set: 20000 + job id mod 20000.
pub fn slurm_port(job_id: u64) -> u16 {
    (20_000 + job_id % 20_000) as u16
}

impl Launch {
    /// One process, no rendezvous.
    pub fn single() -> Launch {
        Launch {
            rank: 0,
            world: 1,
            local_rank: 0,
            local_world: 1,
            master_addr: "127.0.0.1".into(),
            master_port: 0,
            source: Source::Single,
            agent_store: false,
            attempt: 0,
        }
    }

    /// Whether more than one process takes part.
    pub fn is_distributed(&self) -> bool {
        self.world > 1
    }

    /// Whether this process is rank 0, the one that writes.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Launch> {
        Launch::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the launch variables through `get` (the environment, or a table in tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Launch> {
        let num = |var: &'static str| -> Result<Option<usize>> {
            get(var)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| Error::BadVar {
                        var,
                        value: v.clone(),
                        why: "expected a whole number".into(),
                    })
                })
                .transpose()
        };
        let port = |var: &'static str, v: String| -> Result<u16> {
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| Error::BadVar {
                    var,
                    value: v,
                    why: "expected a TCP port (1 to 65535)".into(),
                })
        };
        let launch = if let (Some(rank), Some(world)) = (num("RANK")?, num("WORLD_SIZE")?) {
            let local_rank = num("LOCAL_RANK")?.unwrap_or(rank);
            let local_world = num("LOCAL_WORLD_SIZE")?.unwrap_or(world);
            let (master_addr, master_port) = if world > 1 {
                let because = || format!("WORLD_SIZE={world} needs a rendezvous store");
                let addr = get("MASTER_ADDR").ok_or_else(|| Error::MissingVar {
                    var: "MASTER_ADDR",
                    because: because(),
                })?;
                let p = get("MASTER_PORT").ok_or_else(|| Error::MissingVar {
                    var: "MASTER_PORT",
                    because: because(),
                })?;
                (addr, port("MASTER_PORT", p)?)
            } else {
                ("127.0.0.1".into(), 0)
            };
            Launch {
                rank,
                world,
                local_rank,
                local_world,
                master_addr,
                master_port,
                source: Source::Torchrun,
                agent_store: get("TORCHELASTIC_USE_AGENT_STORE")
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
                attempt: num("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0),
            }
        } else if let (Some(rank), Some(world)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
            let local_rank = num("SLURM_LOCALID")?.unwrap_or(0);
            let local_world = match num("SLURM_NTASKS_PER_NODE")? {
                Some(n) => n,
                None => get("SLURM_TASKS_PER_NODE")
                    .map(|v| first_count(&v))
                    .transpose()?
                    .unwrap_or(1),
            };
            let master_addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None if world > 1 => {
                    let list = get("SLURM_JOB_NODELIST")
                        .or_else(|| get("SLURM_NODELIST"))
                        .ok_or_else(|| Error::MissingVar {
                            var: "SLURM_JOB_NODELIST",
                            because: format!(
                                "SLURM_NTASKS={world} needs a master host (or set MASTER_ADDR)"
                            ),
                        })?;
                    expand_hostlist(&list)?
                        .into_iter()
                        .next()
                        .ok_or_else(|| Error::BadHostlist(list.clone(), "names no host".into()))?
                }
                None => "127.0.0.1".into(),
            };
            let master_port = match get("MASTER_PORT") {
                Some(p) => port("MASTER_PORT", p)?,
                None => slurm_port(num("SLURM_JOB_ID")?.unwrap_or(0) as u64),
            };
            Launch {
                rank,
                world,
                local_rank,
                local_world,
                master_addr,
                master_port,
                source: Source::Slurm,
                agent_store: false,
                attempt: 0,
            }
        } else {
            return Ok(Launch::single());
        };
        launch.check()?;
        Ok(launch)
    }

    fn check(&self) -> Result<()> {
        let (rank_var, world_var, local_var) = match self.source {
            Source::Slurm => ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
            _ => ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
        };
        if self.world == 0 {
            return Err(Error::BadVar {
                var: world_var,
                value: "0".into(),
                why: "a job has at least one process".into(),
            });
        }
        if self.rank >= self.world {
            return Err(Error::BadVar {
                var: rank_var,
                value: self.rank.to_string(),
                why: format!(
                    "ranks of a world of {} are 0 to {}",
                    self.world,
                    self.world - 1
                ),
            });
        }
        if self.local_rank >= self.local_world.max(1) {
            return Err(Error::BadVar {
                var: local_var,
                value: self.local_rank.to_string(),
                why: format!("{} processes on this node", self.local_world),
            });
        }
        Ok(())
    }
}

/// The first count of `SLURM_TASKS_PER_NODE`, e.g. `4(x2),3` → 4.
fn first_count(v: &str) -> Result<usize> {
    let head = v.split([',', '(']).next().unwrap_or_default();
    head.trim().parse().map_err(|_| Error::BadVar {
        var: "SLURM_TASKS_PER_NODE",
        value: v.into(),
        why: "expected counts like `4(x2),3`".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch> {
        Launch::from_vars(|k| {
            vars.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn no_launcher_is_one_process() {
        let l = launch(&[]).unwrap();
        assert_eq!(l, Launch::single());
        assert!(!l.is_distributed() && l.is_leader());
        assert_eq!(l.to_string(), "one process");
    }

    #[test]
    fn torchrun_variables_are_read_and_checked() {
        let l = launch(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "node07"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap();
        assert_eq!(
            (l.rank, l.world, l.local_rank, l.local_world, l.master_port),
            (5, 8, 1, 4, 29500)
        );
        assert_eq!(l.master_addr, "node07");
        assert_eq!(l.source, Source::Torchrun);
        assert!(l.is_distributed() && !l.is_leader());
        let e = launch(&[("RANK", "8"), ("WORLD_SIZE", "8"), ("MASTER_ADDR", "h")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("MASTER_PORT is not set"), "{e}");
        let full = [("MASTER_ADDR", "h"), ("MASTER_PORT", "1")];
        let e = launch(&[[("RANK", "8"), ("WORLD_SIZE", "8")].as_slice(), &full].concat())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("RANK=8: ranks of a world of 8 are 0 to 7"),
            "{e}"
        );
        let e = launch(&[("RANK", "x"), ("WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("RANK=x: expected a whole number"), "{e}");
        let e = launch(
            &[
                [("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "0")].as_slice(),
                &full[..1],
            ]
            .concat(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("MASTER_PORT=0: expected a TCP port"), "{e}");
        // A world of one needs no store.
        let one = launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap();
        assert!(!one.is_distributed());
    }

    #[test]
    fn slurm_variables_name_the_first_node_and_a_job_port() {
        let vars = [
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "3"),
            ("SLURM_TASKS_PER_NODE", "4(x2)"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"),
            ("SLURM_JOB_ID", "123456"),
        ];
        let l = launch(&vars).unwrap();
        assert_eq!((l.rank, l.world, l.local_rank, l.local_world), (3, 8, 3, 4));
        assert_eq!(l.master_addr, "gpu07");
        assert_eq!(l.master_port, slurm_port(123456));
        assert_eq!(l.master_port, 23456);
        assert_eq!(l.source, Source::Slurm);
        // torchrun inside srun: its variables win.
        let mut inner = vars.to_vec();
        inner.extend([
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "9"),
        ]);
        assert_eq!(launch(&inner).unwrap().source, Source::Torchrun);
        let e = launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SLURM_JOB_NODELIST is not set"), "{e}");
    }
}
