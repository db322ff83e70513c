//! Batches of an [`ImageSet`] for training: seeded shuffling per epoch, horizontal flips, a
//! background thread that keeps `prefetch` batches ready, and an exact resume position.
//!
//! The stream is a pure function of (set, seed, options): sample p of the stream is image
//! `perm_e[p mod N]` of epoch e = p div N, where perm_e is a Fisher–Yates shuffle from ChaCha8
//! stream e, and it is flipped when a hash of (seed, p) is odd. A [`Position`] is just p, so a
//! trainer that saves it with its checkpoint resumes on exactly the next sample.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::images::ImageSet;

/// Samples delivered so far (the resume point).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Stream position p (samples since the start of epoch 0).
    pub samples: u64,
}

impl Position {
    /// The epoch the next sample belongs to, for a set of `n` images.
    pub fn epoch(&self, n: usize) -> u64 {
        self.samples / n.max(1) as u64
    }
}

/// Loader options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Seed of the shuffles and flips.
    #[serde(default)]
    pub seed: u64,
    /// Shuffle every epoch (otherwise file order).
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Random horizontal flips (p = 1/2).
    #[serde(default)]
    pub hflip: bool,
    /// Batches prepared ahead by the background thread.
    #[serde(default = "two")]
    pub prefetch: usize,
}

fn yes() -> bool {
    true
}
fn two() -> usize {
    2
}

/// One batch.
#[derive(Debug)]
pub struct ImageBatch {
    /// Images [B, C, H, W] in [-1, 1].
    pub x: Tensor,
    /// Class indices [B] (int64), when the set is labelled.
    pub labels: Option<Tensor>,
    /// The set's image indices, in batch order.
    pub indices: Vec<usize>,
    /// Position after this batch.
    pub next: Position,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The deterministic sample stream (no threads): what [`Loader`] prefetches.
#[derive(Debug)]
pub struct Stream {
    set: Arc<ImageSet>,
    cfg: LoaderConfig,
    pos: Position,
    perm: Option<(u64, Vec<usize>)>,
}

impl Stream {
    /// A stream over `set` starting at `start`.
    pub fn new(set: Arc<ImageSet>, cfg: LoaderConfig, start: Position) -> Result<Self> {
        if cfg.batch_size == 0 || set.is_empty() {
            return Err(Error::Invalid(format!(
                "loader needs a positive batch size and a non-empty dataset (batch {}, {} images in {})",
                cfg.batch_size,
                set.len(),
                set.name
            )));
        }
        Ok(Stream {
            set,
            cfg,
            pos: start,
            perm: None,
        })
    }

    fn index(&mut self, p: u64) -> usize {
        let n = self.set.len();
        let epoch = p / n as u64;
        if !self.cfg.shuffle {
            return (p % n as u64) as usize;
        }
        if self.perm.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
            rng.set_stream(epoch);
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(&mut rng);
            self.perm = Some((epoch, perm));
        }
        let perm = &self.perm.as_ref().expect("set above").1;
        perm[(p % n as u64) as usize]
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> ImageBatch {
        let b = self.cfg.batch_size;
        let start = self.pos.samples;
        let picks: Vec<(usize, bool)> = (0..b as u64)
            .map(|k| {
                let p = start + k;
                let flip = self.cfg.hflip && splitmix(self.cfg.seed ^ splitmix(p)) & 1 == 1;
                (self.index(p), flip)
            })
            .collect();
        let set = &self.set;
        let (c, h, w) = (set.channels, set.height, set.width);
        let mut bytes = vec![0u8; b * c * h * w];
        bytes
            .par_chunks_mut(c * h * w)
            .zip(picks.par_iter())
            .for_each(|(dst, &(i, flip))| {
                let src = set.image(i);
                if flip {
                    for (d, s) in dst.chunks_exact_mut(w).zip(src.chunks_exact(w)) {
                        for (x, v) in d.iter_mut().zip(s.iter().rev()) {
                            *x = *v;
                        }
                    }
                } else {
                    dst.copy_from_slice(src);
                }
            });
        let x = Tensor::from_slice(&bytes)
            .reshape([b as i64, c as i64, h as i64, w as i64])
            .to_kind(Kind::Float)
            / 127.5
            - 1.0;
        let indices: Vec<usize> = picks.iter().map(|(i, _)| *i).collect();
        let labels = set.labels.as_ref().map(|l| {
            let v: Vec<i64> = indices.iter().map(|&i| l[i] as i64).collect();
            Tensor::from_slice(&v)
        });
        self.pos.samples += b as u64;
        ImageBatch {
            x,
            labels,
            indices,
            next: self.pos,
        }
    }
}

/// A [`Stream`] computed on a background thread, `prefetch` batches ahead.
#[derive(Debug)]
pub struct Loader {
    rx: Receiver<ImageBatch>,
    pos: Position,
}

impl Loader {
    /// Starts the background thread at `start`.
    pub fn new(set: Arc<ImageSet>, cfg: LoaderConfig, start: Position) -> Result<Self> {
        let mut stream = Stream::new(set, cfg, start)?;
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        std::thread::Builder::new()
            .name("slimflow-loader".into())
            .spawn(move || {
                // ends when the receiving Loader is dropped
                while tx.send(stream.next_batch()).is_ok() {}
            })
            .map_err(|e| Error::Invalid(format!("cannot start the loader thread: {e}")))?;
        Ok(Loader { rx, pos: start })
    }

    /// The next batch (waits only if the thread has fallen behind).
    pub fn next_batch(&mut self) -> Result<ImageBatch> {
        let b = self
            .rx
            .recv()
            .map_err(|_| Error::Invalid("the loader thread stopped".into()))?;
        self.pos = b.next;
        Ok(b)
    }

    /// Position after the last batch returned: save it to resume there.
    pub fn position(&self) -> Position {
        self.pos
    }
}
