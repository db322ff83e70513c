//! Cooperative interruption: SIGINT/SIGTERM set a flag that the loops poll once per step; they then
//! checkpoint, mark the manifest `interrupted` and return.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the signal handler (once per process; later calls are no-ops).
pub fn install() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        if let Err(e) = ctrlc_handler() {
            tracing::warn!("cannot install the interrupt handler: {e}");
        }
    });
}

fn ctrlc_handler() -> Result<(), String> {
    ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            // Second signal: stop now.
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt received: saving a checkpoint and stopping (send again to stop at once)"
        );
    })
    .map_err(|e| e.to_string())
}

/// Whether an interrupt was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Requests an interrupt (tests, embedding applications).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}
