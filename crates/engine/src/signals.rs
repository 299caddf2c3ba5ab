//! SIGTERM/SIGINT handling: the first signal asks for a clean stop, a second one kills.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the handlers (idempotent). Slurm sends SIGTERM at the time limit; Ctrl-C sends SIGINT.
pub fn install() {
    INSTALL.call_once(|| {
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            // A second signal while a stop is already under way exits at once.
            let _ = signal_hook::flag::register_conditional_shutdown(signal, 3, &STOP);
            let _ = signal_hook::flag::register(signal, &STOP);
        }
    });
}

/// Whether a stop was requested.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// The flag itself, for loops that poll it.
pub(crate) fn flag() -> &'static AtomicBool {
    &STOP
}
