//! The built-in procedural dataset: one coloured shape (circle, square, triangle or ring — its class)
//! on a two-colour gradient background, any size. Image i depends only on (seed, i): it is drawn
//! from its own ChaCha8 stream, so sets of any count agree on their common prefix and rendering is
//! parallel. Anti-aliased by 4×4 supersampling.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::ImageSet;
use crate::error::{Error, Result};

/// Class names, in label order.
pub const SHAPE_CLASSES: [&str; 4] = ["circle", "square", "triangle", "ring"];

struct Scene {
    bg: [[f32; 3]; 2],
    angle: f32,
    class: u16,
    color: [f32; 3],
    cx: f32,
    cy: f32,
    r: f32,
    rot: f32,
}

fn scene(seed: u64, i: u64) -> Scene {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(i);
    let mut muted = || [0u8; 3].map(|_| rng.gen_range(0.1f32..0.6));
    let bg = [muted(), muted()];
    let angle = rng.gen_range(0.0..std::f32::consts::TAU);
    let class = rng.gen_range(0..SHAPE_CLASSES.len() as u16);
    // a saturated colour: one channel high, one low, one anywhere
    let mut color = [rng.gen_range(0.0f32..1.0); 3];
    let hi = rng.gen_range(0..3);
    let lo = (hi + rng.gen_range(1..3)) % 3;
    color[hi] = rng.gen_range(0.85..1.0);
    color[lo] = rng.gen_range(0.0..0.15);
    color[3 - hi - lo] = rng.gen_range(0.0..1.0);
    let r = rng.gen_range(0.18f32..0.32);
    Scene {
        bg,
        angle,
        class,
        color,
        cx: rng.gen_range(r..1.0 - r),
        cy: rng.gen_range(r..1.0 - r),
        r,
        rot: rng.gen_range(0.0..std::f32::consts::TAU),
    }
}

fn inside(s: &Scene, x: f32, y: f32) -> bool {
    let (dx, dy) = (x - s.cx, y - s.cy);
    let (c, sn) = (s.rot.cos(), s.rot.sin());
    let (u, v) = (c * dx + sn * dy, -sn * dx + c * dy);
    match s.class {
        0 => dx * dx + dy * dy <= s.r * s.r,
        1 => u.abs() <= s.r * 0.8 && v.abs() <= s.r * 0.8,
        2 => {
            // equilateral triangle with circumradius r
            let k = 3f32.sqrt();
            v >= -s.r * 0.5 && k * u + v <= s.r && -k * u + v <= s.r
        }
        _ => {
            let d2 = dx * dx + dy * dy;
            d2 <= s.r * s.r && d2 >= (s.r * 0.55) * (s.r * 0.55)
        }
    }
}

fn render(size: usize, s: &Scene) -> Vec<u8> {
    const SS: usize = 4;
    let mut out = vec![0u8; 3 * size * size];
    let (ca, sa) = (s.angle.cos(), s.angle.sin());
    for py in 0..size {
        for px in 0..size {
            let mut acc = [0f32; 3];
            for sy in 0..SS {
                for sx in 0..SS {
                    let x = (px as f32 + (sx as f32 + 0.5) / SS as f32) / size as f32;
                    let y = (py as f32 + (sy as f32 + 0.5) / SS as f32) / size as f32;
                    let c = if inside(s, x, y) {
                        s.color
                    } else {
                        let g = (((x - 0.5) * ca + (y - 0.5) * sa) / std::f32::consts::SQRT_2
                            + 0.5)
                            .clamp(0.0, 1.0);
                        [0, 1, 2].map(|k| s.bg[0][k] * (1.0 - g) + s.bg[1][k] * g)
                    };
                    for k in 0..3 {
                        acc[k] += c[k];
                    }
                }
            }
            for (k, a) in acc.iter().enumerate() {
                out[k * size * size + py * size + px] =
                    (a / (SS * SS) as f32 * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// `count` images of `size × size`, labelled by shape.
pub(crate) fn generate(size: usize, count: usize, seed: u64) -> Result<ImageSet> {
    if !(8..=1024).contains(&size) || count == 0 {
        return Err(Error::Invalid(format!(
            "shapes: size must be 8–1024 and count positive, got size {size}, count {count}"
        )));
    }
    let images: Vec<(Vec<u8>, u16)> = (0..count as u64)
        .into_par_iter()
        .map(|i| {
            let s = scene(seed, i);
            (render(size, &s), s.class)
        })
        .collect();
    let mut pixels = Vec::with_capacity(count * 3 * size * size);
    let mut labels = Vec::with_capacity(count);
    for (img, l) in images {
        pixels.extend_from_slice(&img);
        labels.push(l);
    }
    Ok(ImageSet {
        name: format!("shapes:{size}"),
        channels: 3,
        height: size,
        width: size,
        pixels,
        labels: Some(labels),
        classes: SHAPE_CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}
