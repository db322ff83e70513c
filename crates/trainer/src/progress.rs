//! Progress display: a bar with rate and ETA on a terminal, a log line with the same every 10 %
//! otherwise (logs, `cargo xtask` stage output, batch jobs).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of a counted task.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    next_log: u64,
    start: u64,
    started: Instant,
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
            start,
            started: Instant::now(),
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
                    let rate = rate_and_eta(
                        pos.saturating_sub(self.start),
                        self.total.saturating_sub(pos),
                        self.started.elapsed(),
                    );
                    tracing::info!(
                        "{}: {pos}/{} ({:.0} %) {rate} {}",
                        self.label,
                        self.total,
                        100.0 * pos as f64 / self.total.max(1) as f64,
                        msg()
                    );
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

/// "12.5/s, ETA 1m 20s" after `done` units in `elapsed` with `left` to go.
pub fn rate_and_eta(done: u64, left: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if done == 0 || secs <= 0.0 {
        return "ETA –".into();
    }
    let per_sec = done as f64 / secs;
    let rate = if per_sec >= 1.0 {
        format!("{per_sec:.1}/s")
    } else {
        format!("{:.1} s each", 1.0 / per_sec)
    };
    format!("{rate}, ETA {}", human_duration(left as f64 / per_sec))
}

/// 75 → "1m 15s", 4000 → "1h 06m", 9 → "9s".
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_read_as_a_person_would_say_them() {
        assert_eq!(
            rate_and_eta(50, 150, Duration::from_secs(10)),
            "5.0/s, ETA 30s"
        );
        assert_eq!(
            rate_and_eta(2, 100, Duration::from_secs(10)),
            "5.0 s each, ETA 8m 20s"
        );
        assert_eq!(rate_and_eta(0, 100, Duration::from_secs(10)), "ETA –");
        assert_eq!(human_duration(4000.0), "1h 06m");
        assert_eq!(human_duration(9.4), "9s");
    }
}
