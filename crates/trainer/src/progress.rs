//! Progress display: a bar with rate and ETA on a terminal, a log line every 10 % otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of a counted task.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    next_log: u64,
}

impl Progress {
    /// Starts at `start` of `total` units.
    pub fn new(label: &str, start: u64, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total).with_position(start);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>14} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b
        });
        Progress {
            bar,
            label: label.to_string(),
            total,
            next_log: start + total.div_ceil(10).max(1),
        }
    }

    /// Moves to `pos` with a short status message.
    pub fn set(&mut self, pos: u64, msg: impl FnOnce() -> String) {
        match &self.bar {
            Some(b) => {
                b.set_position(pos);
                b.set_message(msg());
            }
            None => {
                if pos >= self.next_log || pos == self.total {
                    tracing::info!("{}: {pos}/{} {}", self.label, self.total, msg());
                    self.next_log = pos + self.total.div_ceil(10).max(1);
                }
            }
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
