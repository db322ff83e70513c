//! TensorBoard logging of a training stage: every metric record as scalars and the periodic sample
//! grids as images, in event files beside `metrics.jsonl`, so `tensorboard --logdir runs/` shows
//! each stage of each run (`<run>/<stage>`) as one TensorBoard run.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use slimflow_metrics::pictures::RgbImage;
use slimflow_tensorboard::EventWriter;

use crate::error::Result;
use crate::sink::MetricSink;

/// A handle on a stage's event file, shared by the metric sink and the sample-grid hook. The file
/// is created on first use, so a stage that logs nothing leaves none.
#[derive(Debug, Clone)]
pub struct TensorBoard {
    inner: Rc<RefCell<Inner>>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    writer: Option<EventWriter>,
}

impl TensorBoard {
    /// Event files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TensorBoard {
            inner: Rc::new(RefCell::new(Inner {
                dir: dir.into(),
                writer: None,
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut EventWriter) -> Result<T>) -> Result<T> {
        let inner = &mut *self.inner.borrow_mut();
        let w = match inner.writer.take() {
            Some(w) => w,
            None => EventWriter::create(&inner.dir)?,
        };
        f(inner.writer.insert(w))
    }

    /// Logs `image` under `tag` at `step`.
    pub fn image(&self, tag: &str, step: u64, image: &RgbImage) -> Result<()> {
        let png = image.to_png()?;
        self.with(|w| {
            Ok(w.add_png(
                tag,
                &png,
                image.width as u32,
                image.height as u32,
                3,
                step as i64,
            )?)
        })
    }
}

impl MetricSink for TensorBoard {
    /// A resumed run marks its restart: TensorBoard then hides what the killed session logged past
    /// the resumed step, as `metrics.jsonl` drops those lines.
    fn begin(&mut self, start: u64) -> Result<()> {
        if start > 0 {
            self.with(|w| Ok(w.resume_at(start as i64 + 1)?))?;
        }
        Ok(())
    }

    fn record(&mut self, step: u64, fields: &[(&str, f64)]) -> Result<()> {
        self.with(|w| Ok(w.add_scalars(step as i64, fields)?))
    }

    fn finish(&mut self) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        if let Some(w) = inner.writer.as_mut() {
            w.flush()?;
        }
        Ok(())
    }
}

/// The event files in `dir`, sorted by name (their creation second comes first).
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
