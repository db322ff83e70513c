//! Metric sinks: where the training loop's records go (`metrics.jsonl`, one JSON object per logged
//! step, by default).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result};

/// Receives metric records. The loop calls [`begin`](MetricSink::begin) once the resumed step is
/// known, [`record`](MetricSink::record) every `log_every` steps and at the last one, and
/// [`finish`](MetricSink::finish) when it returns without error.
pub trait MetricSink {
    /// The run starts (or resumes) after `start` completed steps; records past it are stale.
    fn begin(&mut self, start: u64) -> Result<()> {
        let _ = start;
        Ok(())
    }

    /// Records `fields` at `step`.
    fn record(&mut self, step: u64, fields: &[(&str, f64)]) -> Result<()>;

    /// The run ended (finished or interrupted); buffered records must be out by now.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Lets a caller keep a sink and read it after the loop has used it.
impl<S: MetricSink + ?Sized> MetricSink for &mut S {
    fn begin(&mut self, start: u64) -> Result<()> {
        (**self).begin(start)
    }

    fn record(&mut self, step: u64, fields: &[(&str, f64)]) -> Result<()> {
        (**self).record(step, fields)
    }

    fn finish(&mut self) -> Result<()> {
        (**self).finish()
    }
}

/// Appends to `metrics.jsonl`. Beginning a resumed run drops lines past the resumed step, so the
/// file reads as one uninterrupted history.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
}

impl JsonlSink {
    /// A sink for `path` that touches the file only from [`MetricSink::begin`] on.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonlSink { path: path.into() }
    }

    /// Opens `path`, keeping only records with step ≤ `resume_step` (all of them for a fresh run
    /// start at 0, so none survive).
    pub fn open(path: &Path, resume_step: u64) -> Result<Self> {
        let mut sink = JsonlSink::new(path);
        sink.begin(resume_step)?;
        Ok(sink)
    }
}

impl MetricSink for JsonlSink {
    fn begin(&mut self, resume_step: u64) -> Result<()> {
        let path = &self.path;
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(io_err(path))?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= resume_step && resume_step > 0)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(path, kept).map_err(io_err(path))?;
        }
        Ok(())
    }

    fn record(&mut self, step: u64, fields: &[(&str, f64)]) -> Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("step".into(), step.into());
        for (k, v) in fields {
            obj.insert(
                (*k).into(),
                serde_json::Number::from_f64(*v)
                    .map(Into::into)
                    .unwrap_or(serde_json::Value::Null),
            );
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        writeln!(f, "{}", serde_json::Value::Object(obj)).map_err(io_err(&self.path))
    }
}

/// Keeps records in memory (tests).
#[derive(Debug, Default)]
pub struct MemorySink {
    /// (step, fields) in order.
    pub records: Vec<(u64, Vec<(String, f64)>)>,
}

impl MetricSink for MemorySink {
    fn record(&mut self, step: u64, fields: &[(&str, f64)]) -> Result<()> {
        self.records.push((
            step,
            fields.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_drops_lines_past_the_resumed_step() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut s = JsonlSink::open(&p, 0).unwrap();
        for step in [10, 20, 30] {
            s.record(step, &[("loss", 0.5)]).unwrap();
        }
        let mut s = JsonlSink::open(&p, 20).unwrap();
        s.record(30, &[("loss", 0.25)]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let steps: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(steps, vec![10, 20, 30]);
        assert!(text.lines().last().unwrap().contains("0.25"));
        JsonlSink::open(&p, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "");
    }
}
