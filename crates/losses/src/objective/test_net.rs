//! A tiny network for the objectives' tests: one linear layer over [x, t, one-hot labels], so
//! every input reaches the output and every parameter receives a gradient.

use slimflow_sampling::Network;
use tch::nn::{self, Module};
use tch::{Device, Tensor};

/// v(x, t, y) = W·[x, t, onehot(y)] + b, reshaped to x's shape.
#[derive(Debug)]
pub(crate) struct TestNet {
    /// Its parameters (`linear.weight`, `linear.bias`).
    pub vs: nn::VarStore,
    linear: nn::Linear,
    label_dim: i64,
}

impl TestNet {
    /// A randomly initialised network for samples of `shape` (without the batch dimension),
    /// conditioned on `label_dim` classes (0: unconditional).
    pub fn new(shape: &[i64], label_dim: i64) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let dim: i64 = shape.iter().product();
        let linear = nn::linear(
            vs.root() / "linear",
            dim + 1 + label_dim,
            dim,
            Default::default(),
        );
        TestNet {
            vs,
            linear,
            label_dim,
        }
    }
}

impl Network for TestNet {
    fn forward_t(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>, _train: bool) -> Tensor {
        let b = x.size()[0];
        let mut inputs = vec![x.reshape([b, -1]), t.reshape([b, 1]).to_kind(x.kind())];
        if self.label_dim > 0 {
            let labels = labels.expect("a class-conditional test network needs labels");
            inputs.push(labels.one_hot(self.label_dim).to_kind(x.kind()));
        }
        self.linear
            .forward(&Tensor::cat(&inputs, 1))
            .reshape(x.size())
    }

    fn label_dim(&self) -> i64 {
        self.label_dim
    }
}
