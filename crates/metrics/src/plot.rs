//! PNG plots of 2-D samples and trajectories, rasterised directly (no plotting dependency).
//!
//! The view is the square [−extent, extent]²; points outside are clipped.

use std::path::Path;

use tch::Tensor;

use crate::error::{Error, Result};
use crate::toy::to_array;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// Light grey for reference (target) samples.
pub const GREY: Rgb = [190, 190, 190];
/// Blue for model samples.
pub const BLUE: Rgb = [31, 119, 180];
/// Orange for trajectories' endpoints.
pub const ORANGE: Rgb = [255, 127, 14];

/// A square RGB image over [−extent, extent]².
#[derive(Debug)]
pub struct Canvas {
    size: usize,
    extent: f64,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A white canvas of `size`×`size` pixels with light axes.
    pub fn new(size: usize, extent: f64) -> Self {
        let mut c = Canvas {
            size,
            extent,
            pixels: vec![255; size * size * 3],
        };
        for i in 0..size {
            c.put(i as i64, (size / 2) as i64, [235, 235, 235]);
            c.put((size / 2) as i64, i as i64, [235, 235, 235]);
        }
        c
    }

    fn to_px(&self, x: f64, y: f64) -> (i64, i64) {
        let s = self.size as f64;
        (
            ((x + self.extent) / (2.0 * self.extent) * s).floor() as i64,
            ((self.extent - y) / (2.0 * self.extent) * s).floor() as i64,
        )
    }

    fn put(&mut self, px: i64, py: i64, c: Rgb) {
        if px >= 0 && py >= 0 && (px as usize) < self.size && (py as usize) < self.size {
            let i = (py as usize * self.size + px as usize) * 3;
            self.pixels[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A dot of `radius` pixels at data coordinates (x, y).
    pub fn dot(&mut self, x: f64, y: f64, radius: i64, c: Rgb) {
        let (px, py) = self.to_px(x, y);
        for dy in -radius..=radius {
            for dx in -radius..=radius {
                if dx * dx + dy * dy <= radius * radius {
                    self.put(px + dx, py + dy, c);
                }
            }
        }
    }

    /// A straight segment between two data points.
    pub fn line(&mut self, a: (f64, f64), b: (f64, f64), c: Rgb) {
        let (x0, y0) = self.to_px(a.0, a.1);
        let (x1, y1) = self.to_px(b.0, b.1);
        let steps = (x1 - x0)
            .abs()
            .max((y1 - y0).abs())
            .clamp(1, 4 * self.size as i64);
        for i in 0..=steps {
            let f = i as f64 / steps as f64;
            let px = x0 as f64 + f * (x1 - x0) as f64;
            let py = y0 as f64 + f * (y1 - y0) as f64;
            self.put(px.round() as i64, py.round() as i64, c);
        }
    }

    /// Dots for every row of a [N, 2] tensor.
    pub fn scatter(&mut self, points: &Tensor, radius: i64, c: Rgb) -> Result<()> {
        let a = to_array(points)?;
        if a.ncols() != 2 {
            return Err(Error::BadInput(format!(
                "scatter needs [N, 2] points, got {:?}",
                a.dim()
            )));
        }
        for row in a.rows() {
            self.dot(row[0], row[1], radius, c);
        }
        Ok(())
    }

    /// Writes the canvas as an 8-bit RGB PNG.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::pictures::write_rgb_png(path, self.size, self.size, &self.pixels)
    }
}

/// Model samples (blue) over reference samples (grey).
pub fn samples_png(path: &Path, reference: &Tensor, samples: &Tensor, extent: f64) -> Result<()> {
    let mut c = Canvas::new(512, extent);
    c.scatter(reference, 1, GREY)?;
    c.scatter(samples, 1, BLUE)?;
    c.save(path)
}

/// The first `count` trajectories of a captured path (each x: [B, 2]) as polylines, start points
/// grey, endpoints orange.
pub fn trajectories_png(
    path: &Path,
    trajectory: &[(f64, Tensor)],
    count: usize,
    extent: f64,
) -> Result<()> {
    if trajectory.len() < 2 {
        return Err(Error::BadInput(
            "a trajectory needs at least two points".into(),
        ));
    }
    let steps: Vec<_> = trajectory
        .iter()
        .map(|(_, x)| to_array(&x.narrow(0, 0, (count as i64).min(x.size()[0]))))
        .collect::<Result<_>>()?;
    let mut c = Canvas::new(512, extent);
    let n = steps[0].nrows();
    for i in 0..n {
        for w in steps.windows(2) {
            c.line(
                (w[0][[i, 0]], w[0][[i, 1]]),
                (w[1][[i, 0]], w[1][[i, 1]]),
                BLUE,
            );
        }
    }
    for i in 0..n {
        c.dot(steps[0][[i, 0]], steps[0][[i, 1]], 2, GREY);
        let last = &steps[steps.len() - 1];
        c.dot(last[[i, 0]], last[[i, 1]], 2, ORANGE);
    }
    c.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        (info.width, info.height, buf)
    }

    #[test]
    fn scatter_plot_decodes_and_marks_the_points() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.png");
        let reference = Tensor::from_slice(&[-2.0f32, -2.0]).reshape([1, 2]);
        let samples = Tensor::from_slice(&[2.0f32, 2.0]).reshape([1, 2]);
        samples_png(&p, &reference, &samples, 4.0).unwrap();
        let (w, h, buf) = decode(&p);
        assert_eq!((w, h), (512, 512));
        // (2, 2) maps to pixel (384, 128); (−2, −2) to (128, 384).
        let at = |x: usize, y: usize| &buf[(y * 512 + x) * 3..(y * 512 + x) * 3 + 3];
        assert_eq!(at(384, 128), BLUE);
        assert_eq!(at(128, 384), GREY);
        assert_eq!(at(50, 50), [255, 255, 255]);
    }

    #[test]
    fn trajectory_plot_draws_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.png");
        let traj: Vec<(f64, Tensor)> = (0..=4)
            .map(|i| {
                (
                    i as f64 / 4.0,
                    Tensor::full([3, 2], i as f64 - 2.0, (Kind::Float, Device::Cpu)),
                )
            })
            .collect();
        trajectories_png(&p, &traj, 2, 4.0).unwrap();
        let (_, _, buf) = decode(&p);
        assert!(buf.chunks(3).filter(|c| *c == BLUE).count() > 100);
        assert!(trajectories_png(&p, &traj[..1], 2, 4.0).is_err());
    }
}
