//! Peak resident memory of one call, for the criterion benchmarks (Linux; CPU memory only).
//!
//! Writing `5` to `/proc/self/clear_refs` resets the process's high-water mark (`VmHWM`), so the
//! peak of a single step can be read after running it once.

/// Runs `f` once and returns (peak RSS during it, RSS before it) in MiB, or `None` where
/// `/proc` does not support resetting the peak.
pub fn peak_rss_mib(f: impl FnOnce()) -> Option<(f64, f64)> {
    let before = status_kib("VmRSS:")?;
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    f();
    let peak = status_kib("VmHWM:")?;
    Some((peak as f64 / 1024.0, before as f64 / 1024.0))
}

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Prints the peak of one call of `f` under `label` (to stderr, beside criterion's output).
pub fn report(label: &str, f: impl FnOnce()) {
    match peak_rss_mib(f) {
        Some((peak, before)) => eprintln!(
            "peak memory {label}: {peak:.0} MiB resident ({:.0} MiB above the {before:.0} MiB before the step)",
            peak - before
        ),
        None => eprintln!("peak memory {label}: not measurable on this system"),
    }
}
