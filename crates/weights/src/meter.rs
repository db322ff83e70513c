//! Download progress: indicatif's bar on a terminal; elsewhere (logs, batch jobs, `cargo xtask`)
//! a line with the bytes, the rate and the ETA every 10 % of the file, or every 30 s when the
//! server does not say its size.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};

/// Seconds between lines when the size is unknown.
const UNSIZED_EVERY: Duration = Duration::from_secs(30);

enum Show {
    Bar(ProgressBar),
    Lines(Box<dyn Write>),
    Nothing,
}

/// Progress of one download.
pub(crate) struct Meter {
    show: Show,
    name: String,
    total: Option<u64>,
    /// Bytes already there when this session began (a resumed `.part`).
    start: u64,
    started: Instant,
    next_at: u64,
    last_line: Instant,
}

impl Meter {
    /// A meter for `name` of `total` bytes from `start`: a bar on a terminal, lines otherwise,
    /// nothing unless `progress`.
    pub(crate) fn new(name: &str, start: u64, total: Option<u64>, progress: bool) -> Self {
        let show = if !progress {
            Show::Nothing
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total.unwrap_or(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(name.to_string());
            bar.set_position(start);
            Show::Bar(bar)
        } else {
            Show::Lines(Box::new(std::io::stderr()))
        };
        Self::with(show, name, start, total)
    }

    fn with(show: Show, name: &str, start: u64, total: Option<u64>) -> Self {
        let mut m = Meter {
            show,
            name: name.to_string(),
            total,
            start,
            started: Instant::now(),
            next_at: 0,
            last_line: Instant::now(),
        };
        m.next_at = m.step_after(start);
        m
    }

    /// The next byte count at which a line is due after `pos` (sized downloads).
    fn step_after(&self, pos: u64) -> u64 {
        match self.total {
            Some(t) => {
                let step = t.div_ceil(10).max(1);
                (pos / step + 1) * step
            }
            None => u64::MAX,
        }
    }

    /// Moves to `pos` bytes.
    pub(crate) fn set(&mut self, pos: u64) {
        match &mut self.show {
            Show::Bar(b) => b.set_position(pos),
            Show::Nothing => {}
            Show::Lines(out) => {
                let due = match self.total {
                    Some(t) => pos >= self.next_at.min(t),
                    None => self.last_line.elapsed() >= UNSIZED_EVERY,
                };
                if due {
                    let text = line(
                        &self.name,
                        pos,
                        self.total,
                        pos.saturating_sub(self.start),
                        self.started.elapsed(),
                    );
                    let _ = writeln!(out, "{text}");
                    self.last_line = Instant::now();
                    self.next_at = self.step_after(pos);
                }
            }
        }
    }

    /// Ends the display.
    pub(crate) fn finish(&self) {
        if let Show::Bar(b) = &self.show {
            b.finish_and_clear();
        }
    }
}

/// "inception.pt: 30.00 MiB of 90.00 MiB (33 %), 3.00 MiB/s, ETA 20 seconds": at `pos` bytes of
/// `total`, `fresh` of them fetched in `elapsed`.
fn line(name: &str, pos: u64, total: Option<u64>, fresh: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = (secs > 0.0)
        .then(|| fresh as f64 / secs)
        .filter(|r| *r > 0.0);
    let speed = rate.map_or_else(String::new, |r| format!(", {}/s", HumanBytes(r as u64)));
    match total {
        Some(t) => {
            let eta = rate.map_or_else(
                || ", ETA –".to_string(),
                |r| {
                    let left = t.saturating_sub(pos) as f64 / r;
                    format!(", ETA {}", HumanDuration(Duration::from_secs_f64(left)))
                },
            );
            format!(
                "{name}: {} of {} ({:.0} %){speed}{eta}",
                HumanBytes(pos),
                HumanBytes(t),
                100.0 * pos as f64 / t.max(1) as f64
            )
        }
        None => format!("{name}: {}{speed}", HumanBytes(pos)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_says_bytes_rate_and_eta() {
        let mib = 1 << 20;
        assert_eq!(
            line(
                "x.pt",
                30 * mib,
                Some(90 * mib),
                30 * mib,
                Duration::from_secs(10)
            ),
            "x.pt: 30.00 MiB of 90.00 MiB (33 %), 3.00 MiB/s, ETA 20 seconds"
        );
        assert_eq!(
            line("x.pt", 0, Some(90 * mib), 0, Duration::ZERO),
            "x.pt: 0 B of 90.00 MiB (0 %), ETA –"
        );
        assert_eq!(
            line("x.bin", 5 * mib, None, 5 * mib, Duration::from_secs(5)),
            "x.bin: 5.00 MiB, 1.00 MiB/s"
        );
    }

    #[test]
    fn lines_come_every_tenth_of_the_file_from_a_resumed_start() {
        let sink = Sink::default();
        let mut m = Meter::with(Show::Lines(Box::new(sink.clone())), "f", 250, Some(1000));
        for pos in (260..=1000).step_by(10) {
            m.set(pos);
        }
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let pcts: Vec<&str> = text
            .lines()
            .map(|l| l.split(['(', ')']).nth(1).unwrap())
            .collect();
        assert_eq!(
            pcts,
            ["30 %", "40 %", "50 %", "60 %", "70 %", "80 %", "90 %", "100 %"]
        );
    }
}
