//! AlexNet feature taps as the `lpips` package slices torchvision's `alexnet().features`: parameters
//! at `net.slice{k}.{i}` with i the index in `features` (convolutions at 0, 3, 6, 8, 10; 3×3 stride-2
//! pooling at 2 and 5 opens slices 2 and 3).

use tch::{nn, nn::Module, Tensor};

use super::{pool, Features, Pooling};

#[derive(Debug)]
pub(crate) struct Alex {
    convs: Vec<nn::Conv2D>,
    pooling: Pooling,
}

impl Alex {
    pub(crate) fn new(p: &nn::Path, pooling: Pooling) -> Self {
        let conv = |slice: usize, idx: usize, cin, cout, k, stride, pad| {
            let cfg = nn::ConvConfig {
                stride,
                padding: pad,
                ..Default::default()
            };
            nn::conv2d(p / format!("slice{slice}") / idx, cin, cout, k, cfg)
        };
        let convs = vec![
            conv(1, 0, 3, 64, 11, 4, 2),
            conv(2, 3, 64, 192, 5, 1, 2),
            conv(3, 6, 192, 384, 3, 1, 1),
            conv(4, 8, 384, 256, 3, 1, 1),
            conv(5, 10, 256, 256, 3, 1, 1),
        ];
        Alex { convs, pooling }
    }
}

impl Features for Alex {
    fn channels(&self) -> [i64; 5] {
        [64, 192, 384, 256, 256]
    }

    fn taps(&self, x: &Tensor) -> Vec<Tensor> {
        let mut h = x.shallow_clone();
        let mut taps = Vec::with_capacity(5);
        for (k, conv) in self.convs.iter().enumerate() {
            if k == 1 || k == 2 {
                h = pool(&h, self.pooling, 3, 2);
            }
            h = conv.forward(&h).relu();
            taps.push(h.shallow_clone());
        }
        taps
    }
}
