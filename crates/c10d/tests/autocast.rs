//! The autocast dtype setting round-trips without a GPU.

use slimflow_c10d::autocast::{self, DeviceType};
use tch::Kind;

#[test]
fn cuda_autocast_dtype_round_trips() {
    autocast::set_dtype(DeviceType::Cuda, Kind::BFloat16).expect("set bf16");
    assert_eq!(
        autocast::dtype(DeviceType::Cuda).expect("get"),
        Kind::BFloat16
    );
    autocast::set_dtype(DeviceType::Cuda, Kind::Half).expect("set f16");
    assert_eq!(autocast::dtype(DeviceType::Cuda).expect("get"), Kind::Half);
    autocast::set_dtype(DeviceType::Cpu, Kind::BFloat16).expect("set cpu");
    assert_eq!(
        autocast::dtype(DeviceType::Cpu).expect("get"),
        Kind::BFloat16
    );
    assert!(autocast::set_dtype(DeviceType::Cuda, Kind::Int64).is_err());
    autocast::set_enabled(DeviceType::Cuda, true).expect("enable");
    assert!(autocast::is_enabled(DeviceType::Cuda).expect("enabled"));
    autocast::set_enabled(DeviceType::Cuda, false).expect("disable");
    assert!(!autocast::is_enabled(DeviceType::Cuda).expect("disabled"));
}

#[test]
fn nccl_without_gpu_is_a_clear_error() {
    if tch::Cuda::is_available() {
        return;
    }
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let store = slimflow_c10d::Store::tcp(
        "127.0.0.1",
        port,
        0,
        1,
        true,
        std::time::Duration::from_secs(5),
    )
    .expect("store");
    let err = slimflow_c10d::ProcessGroup::nccl(&store, std::time::Duration::from_secs(5))
        .expect_err("no GPU");
    assert!(err.to_string().contains("CUDA is not available"), "{err}");
}
