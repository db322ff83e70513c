//! Pictures of image models and training runs: sample grids, ODE trajectory strips and loss curves,
//! written as 8-bit RGB PNGs without a plotting dependency.

use std::io::BufWriter;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::plot::Rgb;

/// Writes `pixels` (RGB, row-major, `width·height·3` bytes) as a PNG.
pub fn write_rgb_png(path: &Path, width: usize, height: usize, pixels: &[u8]) -> Result<()> {
    if pixels.len() != width * height * 3 || width == 0 || height == 0 {
        return Err(Error::BadInput(format!(
            "{}: {} bytes for a {width}×{height} RGB image",
            path.display(),
            pixels.len()
        )));
    }
    let file = std::fs::File::create(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    encode_rgb(BufWriter::new(file), width, height, pixels, path)
}

/// PNG-encodes RGB `pixels` into `out`; `path` names the destination in errors.
fn encode_rgb(
    out: impl std::io::Write,
    width: usize,
    height: usize,
    pixels: &[u8],
    path: &Path,
) -> Result<()> {
    let mut enc = png::Encoder::new(out, width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let png_err = |source| Error::Png {
        path: path.to_path_buf(),
        source,
    };
    let mut w = enc.write_header().map_err(png_err)?;
    w.write_image_data(pixels).map_err(png_err)?;
    w.finish().map_err(png_err)
}

/// [B, C, H, W] in [-1, 1] (C = 1 or 3) → B images as HWC RGB bytes.
fn to_rgb_bytes(images: &Tensor) -> Result<(usize, usize, usize, Vec<u8>)> {
    let s = images.size();
    if s.len() != 4 || !(s[1] == 1 || s[1] == 3) {
        return Err(Error::BadInput(format!(
            "pictures need [B, 1 or 3, H, W] images, got {s:?}"
        )));
    }
    let x = images
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .nan_to_num(0.0, None, None)
        .clamp(-1.0, 1.0);
    let x = ((x + 1.0) * 127.5).round().to_kind(Kind::Uint8);
    let x = if s[1] == 1 {
        x.expand([s[0], 3, s[2], s[3]], false)
    } else {
        x
    };
    let hwc = x.permute([0, 2, 3, 1]).contiguous().flatten(0, -1);
    let bytes = Vec::<u8>::try_from(&hwc).map_err(|e| Error::BadInput(e.to_string()))?;
    Ok((s[0] as usize, s[2] as usize, s[3] as usize, bytes))
}

/// Pictures are enlarged to at least this many pixels on their long side (by an integer factor,
/// without smoothing, at most [`MAX_UPSCALE`]×), so 16×16 or 32×32 samples can be judged by eye at
/// 100 % and every pixel stays a sample's pixel.
pub const MIN_LONG_SIDE: usize = 512;
/// The largest enlargement factor.
pub const MAX_UPSCALE: usize = 16;

/// The integer factor that brings a `width`×`height` picture to [`MIN_LONG_SIDE`].
pub fn upscale_factor(width: usize, height: usize) -> usize {
    MIN_LONG_SIDE
        .div_ceil(width.max(height).max(1))
        .clamp(1, MAX_UPSCALE)
}

/// An RGB picture in memory: `width`×`height`, row-major, 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width·height·3` bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// A white picture.
    pub fn white(width: usize, height: usize) -> Self {
        RgbImage {
            width,
            height,
            pixels: vec![255; width * height * 3],
        }
    }

    /// Copies `other` with its top-left corner at (`x`, `y`), clipped to this picture.
    pub fn paste(&mut self, other: &RgbImage, x: usize, y: usize) {
        for row in 0..other.height.min(self.height.saturating_sub(y)) {
            let n = other.width.min(self.width.saturating_sub(x));
            let src = &other.pixels[row * other.width * 3..(row * other.width + n) * 3];
            let d = ((y + row) * self.width + x) * 3;
            self.pixels[d..d + n * 3].copy_from_slice(src);
        }
    }

    /// Enlarged by `factor` without smoothing (nearest neighbour).
    pub fn upscaled(&self, factor: usize) -> RgbImage {
        let f = factor.max(1);
        if self.width == 0 || self.height == 0 {
            return RgbImage::white(self.width * f, self.height * f);
        }
        let mut pixels = Vec::with_capacity(self.pixels.len() * f * f);
        for row in self.pixels.chunks_exact(self.width * 3) {
            let wide: Vec<u8> = row
                .chunks_exact(3)
                .flat_map(|p| std::iter::repeat_n(p, f).flatten().copied())
                .collect();
            for _ in 0..f {
                pixels.extend_from_slice(&wide);
            }
        }
        RgbImage {
            width: self.width * f,
            height: self.height * f,
            pixels,
        }
    }

    /// Writes the picture as a PNG.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_rgb_png(path, self.width, self.height, &self.pixels)
    }

    /// The picture as PNG bytes (for embedding, e.g. in TensorBoard event files).
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        encode_rgb(
            &mut buf,
            self.width,
            self.height,
            &self.pixels,
            Path::new("<memory>"),
        )?;
        Ok(buf)
    }
}

/// Tiles `images` ([B, C, H, W] in [-1, 1]) at 1× into a grid with `cols` columns and a 2-pixel
/// white border.
pub fn tile(images: &Tensor, cols: usize) -> Result<RgbImage> {
    let (b, h, w, bytes) = to_rgb_bytes(images)?;
    let cols = cols.clamp(1, b.max(1));
    let rows = b.div_ceil(cols);
    let pad = 2;
    let mut out = RgbImage::white(cols * (w + pad) + pad, rows * (h + pad) + pad);
    let gw = out.width;
    for i in 0..b {
        let (r, c) = (i / cols, i % cols);
        let (ox, oy) = (pad + c * (w + pad), pad + r * (h + pad));
        for y in 0..h {
            let src = &bytes[(i * h * w + y * w) * 3..(i * h * w + (y + 1) * w) * 3];
            let d = ((oy + y) * gw + ox) * 3;
            out.pixels[d..d + w * 3].copy_from_slice(src);
        }
    }
    Ok(out)
}

/// [`tile`] enlarged to [`MIN_LONG_SIDE`]: the sample grid of reports and training snapshots (8
/// columns of 64 samples is the usual one).
pub fn grid_image(images: &Tensor, cols: usize) -> Result<RgbImage> {
    let g = tile(images, cols)?;
    Ok(g.upscaled(upscale_factor(g.width, g.height)))
}

/// Writes [`grid_image`] as a PNG.
pub fn grid_png(path: &Path, images: &Tensor, cols: usize) -> Result<()> {
    grid_image(images, cols)?.save(path)
}

/// One column of a [`comparison_png`]: a grid of samples under a caption.
#[derive(Debug)]
pub struct Panel {
    /// Caption lines, e.g. the model and how it sampled, its size and NFE, its metric.
    pub caption: Vec<String>,
    /// [B, C, H, W] in [-1, 1].
    pub images: Tensor,
}

/// Each panel's grid is enlarged to at least this width in a comparison figure.
const PANEL_MIN_WIDTH: usize = 256;
/// Caption magnification: 10×14-pixel letters.
const CAPTION_SCALE: usize = 2;

/// Panels side by side, every grid with `cols` columns and enlarged by the same integer factor,
/// each under its caption: data | model A one step | model A ODE | … in one picture.
pub fn comparison_png(path: &Path, panels: &[Panel], cols: usize) -> Result<()> {
    comparison_image(panels, cols)?.save(path)
}

/// The picture [`comparison_png`] writes.
pub fn comparison_image(panels: &[Panel], cols: usize) -> Result<RgbImage> {
    if panels.is_empty() {
        return Err(Error::BadInput(
            "a comparison needs at least one panel".into(),
        ));
    }
    let grids = panels
        .iter()
        .map(|p| tile(&p.images, cols))
        .collect::<Result<Vec<_>>>()?;
    let widest = grids.iter().map(|g| g.width).max().unwrap_or(1);
    let f = PANEL_MIN_WIDTH
        .div_ceil(widest.max(1))
        .clamp(1, MAX_UPSCALE);
    let grids: Vec<RgbImage> = grids.iter().map(|g| g.upscaled(f)).collect();
    let (gap, line) = (16, crate::font::text_height(CAPTION_SCALE) + 6);
    let lines = panels.iter().map(|p| p.caption.len()).max().unwrap_or(0);
    let widths: Vec<usize> = panels
        .iter()
        .zip(&grids)
        .map(|(p, g)| {
            p.caption
                .iter()
                .map(|c| crate::font::text_width(c, CAPTION_SCALE))
                .max()
                .unwrap_or(0)
                .max(g.width)
        })
        .collect();
    let top = gap + lines * line;
    let width = gap + widths.iter().map(|w| w + gap).sum::<usize>();
    let height = top + grids.iter().map(|g| g.height).max().unwrap_or(0) + gap;
    let mut out = RgbImage::white(width, height);
    let mut x = gap;
    for ((p, g), w) in panels.iter().zip(&grids).zip(&widths) {
        for (k, c) in p.caption.iter().enumerate() {
            let (ow, oh) = (out.width, out.height);
            crate::font::draw_text(
                &mut out.pixels,
                ow,
                oh,
                x,
                gap + k * line,
                c,
                CAPTION_SCALE,
                [40, 40, 40],
            );
        }
        out.paste(g, x, top);
        x += w + gap;
    }
    Ok(out)
}

/// One row per sample (the first `rows`), one column per captured time along the ODE (at most
/// `max_cols`, evenly chosen, always including both ends): how x_t moves from noise to data.
pub fn trajectory_strip_png(
    path: &Path,
    states: &[Tensor],
    rows: usize,
    max_cols: usize,
) -> Result<()> {
    if states.is_empty() {
        return Err(Error::BadInput(
            "a trajectory strip needs at least one state".into(),
        ));
    }
    let t = states.len();
    let cols = max_cols.clamp(2, t.max(2)).min(t);
    let picks: Vec<usize> = if cols <= 1 {
        vec![0]
    } else {
        (0..cols).map(|k| k * (t - 1) / (cols - 1)).collect()
    };
    let n = (states[0].size()[0] as usize).min(rows.max(1));
    // sample-major order: row r is sample r at every picked time
    let mut tiles = Vec::with_capacity(n * picks.len());
    for r in 0..n {
        for &k in &picks {
            tiles.push(states[k].narrow(0, r as i64, 1));
        }
    }
    grid_png(path, &Tensor::cat(&tiles, 0), picks.len())
}

const PALETTE: [Rgb; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];

/// Line plot of named series of (step, value) on a 640×400 canvas, with a legend of their names;
/// the y axis is logarithmic when every value is positive and they span more than a factor of 20.
/// Non-finite values are skipped.
pub fn curves_png(path: &Path, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let (w, h, m) = (640usize, 400usize, 40usize);
    let points: Vec<&(f64, f64)> = series
        .iter()
        .flat_map(|(_, s)| s.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if points.is_empty() {
        return Err(Error::BadInput(format!(
            "{}: no finite values to plot",
            path.display()
        )));
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &&(x, y) in &points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let log = y0 > 0.0 && y1 / y0 > 20.0;
    let fy = |y: f64| if log { y.ln() } else { y };
    let (ly0, ly1) = (fy(y0), fy(y1));
    let sx = |x: f64| m as f64 + (x - x0) / (x1 - x0).max(1e-12) * (w - 2 * m) as f64;
    let sy = |y: f64| (h - m) as f64 - (fy(y) - ly0) / (ly1 - ly0).max(1e-12) * (h - 2 * m) as f64;
    let mut px = vec![255u8; w * h * 3];
    let put = |x: i64, y: i64, c: Rgb, px: &mut Vec<u8>| {
        if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
            let i = (y as usize * w + x as usize) * 3;
            px[i..i + 3].copy_from_slice(&c);
        }
    };
    for i in m..=w - m {
        put(i as i64, (h - m) as i64, [120, 120, 120], &mut px);
    }
    for j in m..=h - m {
        put(m as i64, j as i64, [120, 120, 120], &mut px);
    }
    for (k, (_, s)) in series.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log || *y > 0.0))
            .map(|&(x, y)| (sx(x), sy(y)))
            .collect();
        for win in pts.windows(2) {
            let (a, b) = (win[0], win[1]);
            let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).clamp(1, 4 * w);
            for i in 0..=steps {
                let f = i as f64 / steps as f64;
                put(
                    (a.0 + f * (b.0 - a.0)).round() as i64,
                    (a.1 + f * (b.1 - a.1)).round() as i64,
                    c,
                    &mut px,
                );
            }
        }
        if pts.len() == 1 {
            put(pts[0].0 as i64, pts[0].1 as i64, c, &mut px);
        }
        // legend, top right: one 12×4 bar per series after its name
        let ly = m / 2 + 10 * k;
        for dy in 0..4 {
            for dx in 0..12 {
                put((w - m - 12 + dx) as i64, (ly + 2 + dy) as i64, c, &mut px);
            }
        }
        let name = &series[k].0;
        let tx = (w - m - 16).saturating_sub(crate::font::text_width(name, 1));
        crate::font::draw_text(&mut px, w, h, tx, ly, name, 1, [80, 80, 80]);
    }
    write_rgb_png(path, w, h, &px)
}

/// A named series of (step, value) points.
pub type Series = (String, Vec<(f64, f64)>);

/// Every numeric field of a `metrics.jsonl` (one JSON object per line with a `step`) as a series
/// of (step, value), in the order the fields first appear.
pub fn read_metrics(jsonl: &Path) -> Result<Vec<Series>> {
    let text = std::fs::read_to_string(jsonl).map_err(|source| Error::Io {
        path: jsonl.to_path_buf(),
        source,
    })?;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::BadInput(format!("{}:{}: {e}", jsonl.display(), i + 1)))?;
        let Some(obj) = v.as_object() else { continue };
        let Some(step) = obj.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        for (k, val) in obj {
            let Some(y) = val.as_f64().filter(|_| k != "step") else {
                continue;
            };
            match series.iter_mut().find(|(n, _)| n == k) {
                Some((_, s)) => s.push((step, y)),
                None => series.push((k.clone(), vec![(step, y)])),
            }
        }
    }
    Ok(series)
}

/// Plots every numeric field of a `metrics.jsonl` whose name contains "loss" (all fields when none
/// does).
pub fn loss_curve_png(jsonl: &Path, out: &Path) -> Result<Vec<String>> {
    let series = read_metrics(jsonl)?;
    let lossy: Vec<_> = series
        .iter()
        .filter(|(n, _)| n.contains("loss"))
        .cloned()
        .collect();
    let chosen = if lossy.is_empty() { series } else { lossy };
    curves_png(out, &chosen)?;
    Ok(chosen.into_iter().map(|(n, _)| n).collect())
}
