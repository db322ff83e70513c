//! Errors of the trainer crate.

use std::path::PathBuf;

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A required input of a stage is missing.
    #[error("stage `{stage}` needs {what} at {}: run the `{producer}` stage first", path.display())]
    MissingInput {
        /// The stage that needs it.
        stage: &'static str,
        /// What it needs.
        what: &'static str,
        /// Where it looked.
        path: PathBuf,
        /// The stage that produces it.
        producer: &'static str,
    },
    /// The stage directory holds results of another configuration.
    #[error("{}: holds a `{stage}` run with a different configuration (hash {found}, now {expected}); pass --force to discard it", path.display())]
    ConfigChanged {
        /// The stage.
        stage: String,
        /// The stage directory.
        path: PathBuf,
        /// Hash in the manifest.
        found: String,
        /// Hash of the current config.
        expected: String,
    },
    /// Another writer holds the stage directory.
    #[error("{}: the stage directory is in use by {holder}; wait for it to finish or stop it", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it.
        holder: String,
    },
    /// The loss became NaN or infinite.
    #[error("non-finite loss ({value}) at step {step}; the run stopped. Last good checkpoint: {}", checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none yet".into()))]
    NonFiniteLoss {
        /// The step.
        step: u64,
        /// The loss value.
        value: f64,
        /// The newest intact checkpoint.
        checkpoint: Option<PathBuf>,
    },
    /// A state about to be saved holds NaN or infinite values (the loss stayed finite).
    #[error("step {step}: `{tensor}` holds NaN or infinite values; the run stopped without saving it or deleting older states. Last good checkpoint: {}", checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none yet".into()))]
    NonFiniteState {
        /// The step.
        step: u64,
        /// The first non-finite tensor, `param.NAME`, `ema.NAME`, `adam_m.NAME` or `adam_v.NAME`.
        tensor: String,
        /// The newest intact checkpoint.
        checkpoint: Option<PathBuf>,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint or state file is unusable.
    #[error("{}: {reason}", path.display())]
    BadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Inputs that do not fit together (dataset vs architecture, …).
    #[error("{0}")]
    Invalid(String),
    /// From the models crate.
    #[error(transparent)]
    Models(#[from] slimflow_models::Error),
    /// Reading, writing or loading a tensor file.
    #[error(transparent)]
    TensorIo(#[from] slimflow_tensor_io::Error),
    /// From the data crate.
    #[error(transparent)]
    Data(#[from] slimflow_data::Error),
    /// From the losses crate.
    #[error(transparent)]
    Losses(#[from] slimflow_losses::Error),
    /// From the sampling crate.
    #[error(transparent)]
    Sampling(#[from] slimflow_sampling::Error),
    /// From the metrics crate.
    #[error(transparent)]
    Metrics(#[from] slimflow_metrics::Error),
    /// Writing TensorBoard event files.
    #[error(transparent)]
    TensorBoard(#[from] slimflow_tensorboard::Error),
    /// From the schedules crate.
    #[error(transparent)]
    Schedules(#[from] slimflow_schedules::Error),
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// Joining the data-parallel job failed.
    #[error(transparent)]
    Parallel(#[from] slimflow_c10d::C10dError),
    /// A collective failed or timed out: another rank died or hung.
    #[error("rank {rank} of {world}: {op} failed; {}. Run the same command again to resume from the last checkpoint ({message})", gone_text(gone))]
    PeerLost {
        /// This rank.
        rank: usize,
        /// The world size.
        world: usize,
        /// The collective.
        op: String,
        /// Ranks that no longer answer (empty: all answered, e.g. a transient network error).
        gone: Vec<usize>,
        /// The engine's message.
        message: String,
    },
    /// Ranks hold different parameters or optimizer states.
    #[error("step {step}: rank {rank}'s {what} differs from rank 0's; the ranks diverged (different binaries, libraries or hardware?) and the run stopped")]
    Diverged {
        /// The step.
        step: u64,
        /// The first rank that differs.
        rank: usize,
        /// What was compared.
        what: String,
    },
    /// Rank 0 could not run a stage; the other ranks stop with its message.
    #[error("rank 0 stopped stage `{stage}`: {message}")]
    LeaderFailed {
        /// The stage.
        stage: String,
        /// Rank 0's error.
        message: String,
    },
}

fn gone_text(gone: &[usize]) -> String {
    match gone {
        [] => "every rank still answers".to_string(),
        [r] => format!("rank {r} stopped answering (died or hung)"),
        many => format!(
            "ranks {} stopped answering (died or hung)",
            many.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
