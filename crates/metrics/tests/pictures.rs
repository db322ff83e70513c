//! Sample grids, trajectory strips and loss curves decode as the PNGs they claim to be.

use std::path::Path;

use slimflow_metrics::pictures::{curves_png, grid_png, loss_curve_png, trajectory_strip_png};
use tch::{Kind, Tensor};

fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let mut r = png::Decoder::new(std::fs::File::open(path).unwrap())
        .read_info()
        .unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn grids_tile_images_in_place() {
    let dir = tempfile::tempdir().unwrap();
    // 64 RGB 8×8 images; image i is flat grey level i/63 mapped to [-1, 1]
    let levels = Tensor::arange(64, (Kind::Float, tch::Device::Cpu)) / 63.0 * 2.0 - 1.0;
    let imgs = levels
        .view([64, 1, 1, 1])
        .expand([64, 3, 8, 8], false)
        .contiguous();
    let p = dir.path().join("grid.png");
    grid_png(&p, &imgs, 8).unwrap();
    let (w, h, px) = decode(&p);
    assert_eq!((w, h), (8 * 10 + 2, 8 * 10 + 2));
    // image 9 = row 1, col 1: its top-left pixel at (2 + 10, 2 + 10)
    let at = |x: usize, y: usize| px[(y * w as usize + x) * 3];
    assert_eq!(at(12, 12), (9.0f64 / 63.0 * 255.0).round() as u8);
    assert_eq!(at(0, 0), 255, "white border");
    // grayscale input works too; bad shapes are errors
    grid_png(
        &p,
        &Tensor::zeros([3, 1, 4, 4], (Kind::Float, tch::Device::Cpu)),
        8,
    )
    .unwrap();
    assert!(grid_png(
        &p,
        &Tensor::zeros([3, 2, 4, 4], (Kind::Float, tch::Device::Cpu)),
        8
    )
    .is_err());
}

#[test]
fn trajectory_strips_pick_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let states: Vec<Tensor> = (0..11)
        .map(|k| {
            Tensor::full(
                [4, 3, 6, 6],
                k as f64 / 5.0 - 1.0,
                (Kind::Float, tch::Device::Cpu),
            )
        })
        .collect();
    let p = dir.path().join("strip.png");
    trajectory_strip_png(&p, &states, 2, 6).unwrap();
    let (w, h, px) = decode(&p);
    assert_eq!((w, h), (6 * 8 + 2, 2 * 8 + 2));
    let at = |x: usize, y: usize| px[(y * w as usize + x) * 3];
    assert_eq!(at(2, 2), 0, "first column is t = start (−1 → 0)");
    assert_eq!(at(2 + 5 * 8, 2), 255, "last column is t = end (+1 → 255)");
}

#[test]
fn loss_curves_from_metrics_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("metrics.jsonl");
    let lines: Vec<String> = (1..=50)
        .map(|s| {
            format!(
                "{{\"step\": {s}, \"loss\": {}, \"lr\": 0.001}}",
                10.0 / s as f64
            )
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let out = dir.path().join("loss.png");
    assert_eq!(loss_curve_png(&jsonl, &out).unwrap(), ["loss"]);
    let (w, h, px) = decode(&out);
    assert_eq!((w, h), (640, 400));
    assert!(
        px.chunks_exact(3).any(|c| c == [31, 119, 180]),
        "the curve is drawn"
    );
    std::fs::write(&jsonl, "{\"step\": 1, \"loss\": 1}\nnot json\n").unwrap();
    let msg = loss_curve_png(&jsonl, &out).unwrap_err().to_string();
    assert!(msg.contains("metrics.jsonl:2"), "{msg}");
    assert!(curves_png(&out, &[("x".into(), vec![(0.0, f64::NAN)])]).is_err());
}
