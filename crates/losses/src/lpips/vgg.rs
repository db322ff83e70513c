//! VGG16 feature taps as the `lpips` package slices torchvision's `vgg16().features`: parameters at
//! `net.slice{k}.{i}` with i the index in `features` (convolutions at 0, 2, 5, 7, 10, 12, 14, 17, 19,
//! 21, 24, 26, 28; pooling at 4, 9, 16, 23 opens slices 2–5).

use tch::{nn, nn::Module, Tensor};

use super::{pool, Features, Pooling};

/// (slice, feature index, in, out) of every 3×3 convolution.
const CONVS: [(usize, usize, i64, i64); 13] = [
    (1, 0, 3, 64),
    (1, 2, 64, 64),
    (2, 5, 64, 128),
    (2, 7, 128, 128),
    (3, 10, 128, 256),
    (3, 12, 256, 256),
    (3, 14, 256, 256),
    (4, 17, 256, 512),
    (4, 19, 512, 512),
    (4, 21, 512, 512),
    (5, 24, 512, 512),
    (5, 26, 512, 512),
    (5, 28, 512, 512),
];

#[derive(Debug)]
pub(crate) struct Vgg16 {
    /// Convolutions grouped by slice.
    slices: Vec<Vec<nn::Conv2D>>,
    pooling: Pooling,
}

impl Vgg16 {
    pub(crate) fn new(p: &nn::Path, pooling: Pooling) -> Self {
        let mut slices: Vec<Vec<nn::Conv2D>> = (0..5).map(|_| Vec::new()).collect();
        let cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        for (slice, idx, cin, cout) in CONVS {
            let path = p / format!("slice{slice}") / idx;
            slices[slice - 1].push(nn::conv2d(path, cin, cout, 3, cfg));
        }
        Vgg16 { slices, pooling }
    }
}

impl Features for Vgg16 {
    fn channels(&self) -> [i64; 5] {
        [64, 128, 256, 512, 512]
    }

    fn taps(&self, x: &Tensor) -> Vec<Tensor> {
        let mut h = x.shallow_clone();
        let mut taps = Vec::with_capacity(5);
        for (k, convs) in self.slices.iter().enumerate() {
            if k > 0 {
                h = pool(&h, self.pooling, 2, 2);
            }
            for conv in convs {
                h = conv.forward(&h).relu();
            }
            taps.push(h.shallow_clone());
        }
        taps
    }
}
