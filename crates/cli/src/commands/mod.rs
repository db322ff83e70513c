//! One module per subcommand: parse, load config, call the trainer.

pub mod models;
pub mod sample;
pub mod stage;
