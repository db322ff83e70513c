//! Host tensors to the device without waiting for it.
//!
//! A plain `to_device` from ordinary (pageable) host memory to CUDA copies and then waits for the
//! stream, so every tensor a step draws on the host (noise, times, labels, a data batch) would
//! stall the host until the device had finished all earlier work. [`upload`] stages the tensor in
//! page-locked memory from libtorch's caching host allocator and queues a non-blocking copy
//! instead, as a PyTorch `DataLoader(pin_memory=True)` with `.cuda(non_blocking=True)` does. The
//! allocator records the copy on the staging block, so the block is reused only once the copy
//! has run; the caller's tensor is not read after `upload` returns.

use tch::{Device, Tensor};

/// `host` on `device`. To CUDA from the CPU: through page-locked staging memory, queued without
/// waiting (the copy is ordered before later work on the stream, so the values are the same as a
/// blocking copy's). Anything else is `to_device`. If libtorch cannot page-lock (no CUDA context),
/// the copy is the blocking one: only the waiting differs, never the values.
pub fn upload(host: &Tensor, device: Device) -> Tensor {
    if !device.is_cuda() || host.device() != Device::Cpu {
        return host.to_device(device);
    }
    // `_pin_memory` always copies into a fresh staging block (`pin_memory` with a device argument
    // would also print a deprecation warning per call)
    let staged = host
        .f_contiguous()
        .and_then(|t| t.f_internal_pin_memory(device))
        .and_then(|t| t.f_to_device_(device, t.kind(), true, false));
    staged.unwrap_or_else(|_| host.to_device(device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn an_upload_to_cpu_or_cuda_keeps_values_dtype_and_shape() {
        let x = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]) / 7.0;
        let labels = Tensor::from_slice(&[3i64, 1, 4]);
        let mut devices = vec![Device::Cpu];
        if tch::Cuda::is_available() {
            devices.push(Device::Cuda(0));
            // the staged path is the one taken, not the blocking fallback
            assert!(x
                .internal_pin_memory(Device::Cuda(0))
                .is_pinned(Device::Cuda(0)));
        } else {
            eprintln!("no CUDA device: the upload is checked on the CPU only");
        }
        for device in devices {
            let up = upload(&x, device);
            assert_eq!(up.device(), device);
            assert_eq!((up.kind(), up.size()), (Kind::Float, vec![3, 4]));
            assert!(up.to_device(Device::Cpu).equal(&x), "{device:?}");
            // a transposed (non-contiguous) host tensor arrives with the same values
            let t = upload(&x.transpose(0, 1), device);
            assert!(t.to_device(Device::Cpu).equal(&x.transpose(0, 1)));
            let l = upload(&labels, device);
            assert_eq!(l.kind(), Kind::Int64);
            assert!(l.to_device(Device::Cpu).equal(&labels));
        }
    }

    #[test]
    fn a_burst_of_cuda_uploads_each_arrive_intact() {
        // the staging blocks are reused only after their copies ran: a burst of uploads whose host
        // tensors are dropped at once must still deliver every value
        let device = if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        };
        let ups: Vec<Tensor> = (0..64)
            .map(|i| {
                upload(
                    &Tensor::full([4096], i as f64, (Kind::Float, Device::Cpu)),
                    device,
                )
            })
            .collect();
        for (i, u) in ups.iter().enumerate() {
            let (lo, hi) = (u.min().double_value(&[]), u.max().double_value(&[]));
            assert_eq!((lo, hi), (i as f64, i as f64), "upload {i}");
        }
    }
}
