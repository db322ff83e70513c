//! One module per subcommand: parse, load config, call the trainer.

pub mod bench;
pub mod data;
pub mod fid;
pub mod import;
pub mod models;
pub mod parity;
pub mod report;
pub mod sample;
pub mod stage;
pub mod stages;
pub mod weights;
