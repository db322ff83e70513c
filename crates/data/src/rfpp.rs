//! 2-rectified flow++'s reference pairs: `samples.zip` holds the teacher's images as PNGs and `z.zip`
//! holds, under the same stem, the 128-bit PCG64 (state, increment) from which NumPy drew that
//! image's noise with `Generator.standard_normal` (cast to float32). The noise is not stored, so it
//! is regenerated here: NumPy's PCG64 (XSL-RR 128/64) and its 256-layer ziggurat for the normal.
//!
//! The ziggurat tables are built from their definition (Marsaglia & Tsang: r = 3.6541528853610088,
//! layer area v = r·φ(r) + ∫_r^∞ φ with φ(x) = e^{−x²/2}) in float64. They agree with NumPy's to
//! ~1e-14 relative, which reproduces NumPy's float32 noise exactly in every value checked (the
//! fixture test and 300 000 values against NumPy 2.4); a float64 draw can differ in its last bits.

use std::path::Path;
use std::sync::OnceLock;

use rayon::prelude::*;
use tch::{Kind, Tensor};

use crate::archive::{file_len, open_zip, read_named, Zip, MAX_IMAGE_BYTES};
use crate::error::{Error, Result};
use crate::pair_store::{PairDtype, PairStore, PairStoreManifest};

/// NumPy's PCG64 bit generator (128-bit LCG state, XSL-RR output), restored from a saved state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
}

const PCG_MULTIPLIER: u128 = 0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645;

impl Pcg64 {
    /// The generator in NumPy's `bit_generator.state['state']` = {state, inc}.
    pub fn from_state(state: u128, inc: u128) -> Self {
        Pcg64 { state, inc }
    }

    /// Next 64 random bits (advance, then output the new state).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self
            .state
            .wrapping_mul(PCG_MULTIPLIER)
            .wrapping_add(self.inc);
        let s = self.state;
        (((s >> 64) as u64) ^ (s as u64)).rotate_right((s >> 122) as u32)
    }

    /// A double in [0, 1) from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// Rightmost layer edge of the 256-layer normal ziggurat.
const ZIG_R: f64 = 3.654_152_885_361_009;
/// Area of each layer: r·e^{−r²/2} + sqrt(π/2)·erfc(r/√2).
const ZIG_V: f64 = 0.004_928_673_233_974_658;

struct Ziggurat {
    ki: [u64; 256],
    wi: [f64; 256],
    fi: [f64; 256],
}

fn ziggurat() -> &'static Ziggurat {
    static TABLES: OnceLock<Ziggurat> = OnceLock::new();
    TABLES.get_or_init(|| {
        let m = 2f64.powi(52);
        let f = |x: f64| (-0.5 * x * x).exp();
        let mut z = Ziggurat {
            ki: [0; 256],
            wi: [0.0; 256],
            fi: [0.0; 256],
        };
        let (mut dn, mut tn) = (ZIG_R, ZIG_R);
        let q = ZIG_V / f(dn);
        z.ki[0] = (dn / q * m) as u64;
        z.wi[0] = q / m;
        z.wi[255] = dn / m;
        z.fi[0] = 1.0;
        z.fi[255] = f(dn);
        for i in (1..255).rev() {
            dn = (-2.0 * (ZIG_V / dn + f(dn)).ln()).sqrt();
            z.ki[i + 1] = (dn / tn * m) as u64;
            tn = dn;
            z.fi[i] = f(dn);
            z.wi[i] = dn / m;
        }
        z
    })
}

/// One standard normal draw, as NumPy's `Generator.standard_normal` makes it.
pub fn standard_normal(rng: &mut Pcg64) -> f64 {
    let z = ziggurat();
    loop {
        let r = rng.next_u64();
        let idx = (r & 0xff) as usize;
        let r = r >> 8;
        let negative = r & 1 == 1;
        let rabs = (r >> 1) & 0x000f_ffff_ffff_ffff;
        let x = rabs as f64 * z.wi[idx];
        let x = if negative { -x } else { x };
        if rabs < z.ki[idx] {
            return x;
        }
        if idx == 0 {
            // the tail beyond r (Marsaglia's method)
            loop {
                let xx = -(1.0 / ZIG_R) * (-rng.next_f64()).ln_1p();
                let yy = -(-rng.next_f64()).ln_1p();
                if yy + yy > xx * xx {
                    return if (rabs >> 8) & 1 == 1 {
                        -(ZIG_R + xx)
                    } else {
                        ZIG_R + xx
                    };
                }
            }
        }
        if (z.fi[idx - 1] - z.fi[idx]) * rng.next_f64() + z.fi[idx] < (-0.5 * x * x).exp() {
            return x;
        }
    }
}

/// `n` float32 normals from the PCG64 (state, inc), as rfpp's noise generator draws them.
pub fn noise_from_state(state: u128, inc: u128, n: usize) -> Vec<f32> {
    let mut rng = Pcg64::from_state(state, inc);
    (0..n).map(|_| standard_normal(&mut rng) as f32).collect()
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One member of rfpp's zips, at most `limit` bytes (see [`crate::archive`]).
fn read_entry(archive: &mut Zip, path: &Path, name: &str, limit: u64) -> Result<Vec<u8>> {
    read_named(archive, name, file_len(path), limit, path)
}

/// rfpp's label file, written beside `samples.zip` by `generate_edm.py` for class-conditional
/// teachers: one `IMAGE.png,LABEL` row per image (the argmax of the random one-hot label).
pub const RFPP_LABELS: &str = "images_labels.csv";

/// The labels of `images_labels.csv` by image entry name; every row must parse, and an image listed
/// twice must have one label.
fn read_labels(path: &Path) -> Result<std::collections::HashMap<String, i64>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut labels = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row = line
            .rsplit_once(',')
            .and_then(|(name, l)| Some((name.trim(), l.trim().parse::<i64>().ok()?)))
            .filter(|(name, l)| !name.is_empty() && *l >= 0);
        let Some((name, label)) = row else {
            return Err(corrupt(
                path,
                format!("line {}: expected `IMAGE.png,LABEL`, got {line:?}", i + 1),
            ));
        };
        if let Some(old) = labels.insert(name.to_string(), label) {
            if old != label {
                return Err(corrupt(
                    path,
                    format!("line {}: {name} is labelled both {old} and {label}", i + 1),
                ));
            }
        }
    }
    Ok(labels)
}

/// Whether `dir` holds an rfpp pair set (`z.zip` and `samples.zip`).
pub fn is_rfpp_dir(dir: &Path) -> bool {
    dir.join("z.zip").is_file() && dir.join("samples.zip").is_file()
}

/// A pair store in `out` from rfpp's `samples.zip` and `z.zip`: pair j is the j-th `.bin` entry of
/// `z.zip` in name order (rfpp's own order), with the image of the same stem scaled to [-1, 1] as x1
/// and the noise regenerated from the stored generator state as z. When [`RFPP_LABELS`] lies beside
/// `samples.zip` every pair takes its image's label from it (classes: the largest label + 1).
pub fn import_rfpp(
    samples: &Path,
    z: &Path,
    out: &Path,
    shard_size: u64,
    dtype: PairDtype,
) -> Result<PairStore> {
    let mut zs = open_zip(z)?;
    let mut names: Vec<String> = zs
        .file_names()
        .filter(|n| n.ends_with(".bin"))
        .map(String::from)
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(corrupt(z, "no .bin generator states"));
    }
    let mut images = open_zip(samples)?;
    let image_name = |n: &str| format!("{}.png", n.trim_end_matches(".bin"));
    let first = read_entry(
        &mut images,
        samples,
        &image_name(&names[0]),
        MAX_IMAGE_BYTES,
    )?;
    let origin = |n: &str| samples.join(n);
    let (h, w, _) = crate::images::folder::decode_bytes(&first, &origin(&image_name(&names[0])))?;
    let shape = vec![3i64, h as i64, w as i64];
    let numel = 3 * h * w;
    let labels_path = samples
        .parent()
        .map(|d| d.join(RFPP_LABELS))
        .filter(|p| p.is_file());
    let labels = match &labels_path {
        Some(p) => {
            let by_name = read_labels(p)?;
            let per_pair = names
                .iter()
                .map(|n| {
                    let img = image_name(n);
                    by_name
                        .get(&img)
                        .copied()
                        .ok_or_else(|| corrupt(p, format!("no label for {img}")))
                })
                .collect::<Result<Vec<i64>>>()?;
            Some(per_pair)
        }
        None => None,
    };
    let (digest, _) = slimflow_tensor_io::sha256_file(z)?;
    let mut manifest = PairStoreManifest::new(
        names.len() as u64,
        shard_size,
        shape.clone(),
        0,
        digest,
        format!("{{\"imported_rfpp\": \"{}\"}}", z.display()),
    )?
    .with_dtype(dtype);
    if let Some(l) = &labels {
        let classes = l.iter().max().map_or(0, |m| m + 1);
        manifest = manifest.with_classes(u32::try_from(classes).map_err(|_| {
            corrupt(
                labels_path.as_deref().unwrap_or(samples),
                format!("label {} is out of range", classes - 1),
            )
        })?);
    }
    let store = PairStore::create_or_resume(out, manifest)?;
    for shard in store.missing_shards() {
        let range = store.shard_range(shard);
        let mut raw = Vec::with_capacity((range.end - range.start) as usize);
        for j in range.clone() {
            let name = &names[j as usize];
            let st = read_entry(&mut zs, z, name, 1 << 10)?;
            if st.len() != 32 {
                return Err(corrupt(
                    z,
                    format!(
                        "entry {name}: {} bytes, expected 32 (two big-endian 128-bit integers)",
                        st.len()
                    ),
                ));
            }
            let state = u128::from_be_bytes(st[..16].try_into().expect("16 bytes"));
            let inc = u128::from_be_bytes(st[16..].try_into().expect("16 bytes"));
            let img_name = image_name(name);
            let png = read_entry(&mut images, samples, &img_name, MAX_IMAGE_BYTES)?;
            raw.push((state, inc, img_name, png));
        }
        let decoded: Vec<(Vec<f32>, Vec<f32>)> = raw
            .par_iter()
            .map(|(state, inc, img_name, png)| {
                let (ih, iw, chw) = crate::images::folder::decode_bytes(png, &origin(img_name))?;
                if (ih, iw) != (h, w) {
                    return Err(corrupt(
                        samples,
                        format!("entry {img_name}: {iw}×{ih}, the first image is {w}×{h}"),
                    ));
                }
                let x1 = chw.iter().map(|&b| b as f32 / 127.5 - 1.0).collect();
                Ok((noise_from_state(*state, *inc, numel), x1))
            })
            .collect::<Result<_>>()?;
        let mut size = vec![decoded.len() as i64];
        size.extend_from_slice(&shape);
        let flat = |k: usize| -> Vec<f32> {
            decoded
                .iter()
                .flat_map(|d| if k == 0 { &d.0 } else { &d.1 }.iter().copied())
                .collect()
        };
        let zt = Tensor::from_slice(&flat(0)).reshape(&size[..]);
        let xt = Tensor::from_slice(&flat(1)).reshape(&size[..]);
        let lt = labels
            .as_ref()
            .map(|l| Tensor::from_slice(&l[range.start as usize..range.end as usize]));
        store.write_shard(shard, &zt.to_kind(Kind::Float), &xt, lt.as_ref())?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcg64_steps_then_outputs_xsl_rr() {
        // one step from state 0 with increment 1: state' = 1, output = rotr(0 ^ 1, 0) = 1
        let mut g = Pcg64::from_state(0, 1);
        assert_eq!(g.next_u64(), 1);
        // the next state is MULT + 1; its output folds the halves and rotates by the top 6 bits
        let s = PCG_MULTIPLIER + 1;
        let want = (((s >> 64) as u64) ^ (s as u64)).rotate_right((s >> 122) as u32);
        assert_eq!(g.next_u64(), want);
    }

    #[test]
    fn ziggurat_tables_are_consistent() {
        let z = ziggurat();
        // layer edges decrease towards the top; the densities increase to 1
        for i in 1..255 {
            assert!(z.wi[i] < z.wi[i + 1] && z.fi[i] > z.fi[i + 1], "layer {i}");
            assert!(z.ki[i + 1] < 1 << 52);
        }
        assert_eq!(z.ki[1], 0);
        assert!((z.wi[255] * 2f64.powi(52) - ZIG_R).abs() < 1e-12);
        // normal moments of many draws
        let mut g = Pcg64::from_state(12345, 67891);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| standard_normal(&mut g)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
        let tail = xs.iter().filter(|x| x.abs() > ZIG_R).count() as f64 / n as f64;
        assert!((tail - 2.58e-4).abs() < 1.5e-4, "tail mass {tail}");
    }
}
