//! Sample grids, trajectory strips and loss curves decode as the PNGs they claim to be.

use std::path::Path;

use slimflow_metrics::pictures::{
    comparison_png, curves_png, grid_png, loss_curve_png, trajectory_strip_png, upscale_factor,
    Panel, MIN_LONG_SIDE,
};
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
    // 82 px at 1×, enlarged 7× without smoothing to reach 512 px
    let f = upscale_factor(82, 82);
    assert_eq!(f, 7);
    assert_eq!((w, h), (82 * 7, 82 * 7));
    assert!(w as usize >= MIN_LONG_SIDE);
    // image 9 = row 1, col 1: its top-left pixel at (2 + 10, 2 + 10) at 1×, a 7×7 block now
    let at = |x: usize, y: usize| px[(y * w as usize + x) * 3];
    let level = (9.0f64 / 63.0 * 255.0).round() as u8;
    assert_eq!(at(12 * f, 12 * f), level);
    assert_eq!(
        at(12 * f + 6, 12 * f + 6),
        level,
        "nearest neighbour, no smoothing"
    );
    assert_eq!(
        at(12 * f - 1, 12 * f),
        255,
        "the border before it stays white"
    );
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
    let f = upscale_factor(6 * 8 + 2, 2 * 8 + 2);
    assert_eq!((w as usize, h as usize), ((6 * 8 + 2) * f, (2 * 8 + 2) * f));
    let at = |x: usize, y: usize| px[(y * w as usize + x) * 3];
    assert_eq!(at(2 * f, 2 * f), 0, "first column is t = start (−1 → 0)");
    assert_eq!(
        at((2 + 5 * 8) * f, 2 * f),
        255,
        "last column is t = end (+1 → 255)"
    );
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

#[test]
fn comparisons_put_captioned_panels_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let panel = |level: f64, caption: &[&str]| Panel {
        caption: caption.iter().map(|s| s.to_string()).collect(),
        images: Tensor::full([16, 3, 16, 16], level, (Kind::Float, tch::Device::Cpu)),
    };
    let panels = [
        panel(-1.0, &["DATA"]),
        panel(1.0, &["1-RF 1 STEP", "NFE 1 · FD 79.1"]),
        panel(0.0, &["1-RF ODE", "15.7M PARAMS · NFE 100"]),
    ];
    let p = dir.path().join("comparison.png");
    comparison_png(&p, &panels, 4).unwrap();
    let (w, h, px) = decode(&p);
    let at = |x: usize, y: usize| &px[(y * w as usize + x) * 3..(y * w as usize + x) * 3 + 3];
    // each 4×4 grid of 16 px tiles is 74 px at 1×, enlarged 4× to reach 256 px per panel
    assert!(w >= 3 * 296 && h >= 296, "{w}×{h}");
    // find the panels' first sample pixels along a row through the grids
    let y = h as usize - 16 - 296 + 2 * 4 + 1;
    let row: Vec<&[u8]> = (0..w as usize).map(|x| at(x, y)).collect();
    assert!(row.contains(&&[0u8, 0, 0][..]), "data panel (black)");
    assert!(row.contains(&&[128u8, 128, 128][..]), "ODE panel (grey)");
    let black = row.iter().position(|p| *p == [0, 0, 0]).unwrap();
    let grey = row.iter().position(|p| *p == [128, 128, 128]).unwrap();
    assert!(black < grey, "panels keep their order");
    // captions are dark ink above the grids
    let ink = (0..w as usize)
        .flat_map(|x| (0..40).map(move |y| (x, y)))
        .filter(|&(x, y)| at(x, y) == [40, 40, 40])
        .count();
    assert!(ink > 100, "captions drawn ({ink} ink pixels)");
    assert!(comparison_png(&p, &[], 4).is_err());
}
