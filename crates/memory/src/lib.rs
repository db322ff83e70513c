//! What a process may allocate, checked before allocating: a failed allocation aborts the process
//! (libtorch and Rust's allocator both), so settings are refused from their numbers instead.
//!
//! The limit ([`limit_bytes`]):
//! - `SLIMFLOW_MEMORY_LIMIT` when set (bytes, or with a `K`, `M`, `G` or `T` suffix: powers of 1024);
//! - on the CPU, the physical memory (`MemTotal` of `/proc/meminfo`);
//! - on CUDA, [`CUDA_MEMORY_CAP`]: the device's memory is not known here, so only settings that
//!   fit no accelerator are refused.

/// The limit on CUDA devices (1 TiB) unless `SLIMFLOW_MEMORY_LIMIT` is set.
pub const CUDA_MEMORY_CAP: f64 = 1024.0 * 1024.0 * 1024.0 * 1024.0;

/// The limit when the physical memory cannot be read (1 TiB).
const UNKNOWN_MEMORY: f64 = CUDA_MEMORY_CAP;

/// The memory a process may use on the CPU (`cuda = false`) or a CUDA device, in bytes.
pub fn limit_bytes(cuda: bool) -> f64 {
    if let Some(v) = std::env::var("SLIMFLOW_MEMORY_LIMIT")
        .ok()
        .and_then(|v| parse_bytes(&v))
    {
        return v;
    }
    if cuda {
        CUDA_MEMORY_CAP
    } else {
        physical_memory().unwrap_or(UNKNOWN_MEMORY)
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn physical_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// `123`, `64G`, `512M`, `1.5T` (powers of 1024; an optional trailing `B` or `iB`).
pub fn parse_bytes(s: &str) -> Option<f64> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (num, scale) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let p = match c.to_ascii_uppercase() {
                'K' => 1,
                'M' => 2,
                'G' => 3,
                'T' => 4,
                _ => return None,
            };
            (&s[..i], 1024f64.powi(p))
        }
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some(v * scale)
}

/// `12.3 GB` (decimal units).
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else if v >= 1000.0 {
        format!("{b:.3e} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `Err("… needs X, more than the limit of Y …")` when `bytes` exceeds `limit`.
pub fn check_bytes(what: &str, bytes: f64, limit: f64) -> Result<(), String> {
    if bytes <= limit {
        Ok(())
    } else {
        Err(format!(
            "{what} needs at least {}, more than the memory limit of {} (physical memory on the \
             CPU, {} on CUDA; set SLIMFLOW_MEMORY_LIMIT to change it)",
            human_bytes(bytes),
            human_bytes(limit),
            human_bytes(CUDA_MEMORY_CAP)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_and_print() {
        assert_eq!(parse_bytes("64G"), Some(64.0 * 1024f64.powi(3)));
        assert_eq!(parse_bytes("512MiB"), Some(512.0 * 1024f64.powi(2)));
        assert_eq!(parse_bytes("1000"), Some(1000.0));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes("-1G"), None);
        assert_eq!(human_bytes(160e9), "160.0 GB");
        assert_eq!(human_bytes(12.0), "12 B");
        assert!(check_bytes("x", 2.0, 1.0).unwrap_err().contains("2 B"));
        assert!(check_bytes("x", 1.0, 1.0).is_ok());
    }

    #[test]
    fn the_cpu_limit_is_the_physical_memory() {
        if std::env::var_os("SLIMFLOW_MEMORY_LIMIT").is_none() {
            let m = limit_bytes(false);
            assert!(m > 1e8, "{m}");
            assert!(m <= UNKNOWN_MEMORY, "{m}");
            assert_eq!(limit_bytes(true), CUDA_MEMORY_CAP);
        }
    }
}
