//! Loopback ports for tests that must name a port before the process that listens
//! on it starts (a sidecar's config, nginx, Envoy, a Python app).
//!
//! Asking the kernel for port 0 and releasing it races with every other socket on
//! the machine: the kernel hands the same range out to other tests' outgoing
//! connections and `:0` listeners, and CI saw a sidecar fail to start on a port
//! that was taken in between. These ports come from below the ephemeral range
//! (`ip_local_port_range`, 32768 and up by default), which the kernel never hands
//! out on its own. Each test process starts at an offset derived from its PID and
//! walks the range with an atomic counter, so parallel tests in one binary never
//! get the same port, and a port is only returned after a bind to it succeeded.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The reserved range: [`FIRST`, `FIRST + SPAN`).
const FIRST: u32 = 20_000;
const SPAN: u32 = 12_000;

static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

fn next_candidate() -> u16 {
    // Spread processes over the range so two test binaries run one after the other
    // (or by hand in parallel) start far apart.
    let start = (std::process::id().wrapping_mul(7919)) % SPAN;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    // The range is 20_000..32_000, inside u16.
    (FIRST + n % SPAN) as u16
}

/// A loopback TCP port that nothing listens on now and that the kernel will not
/// give to an ephemeral socket. Panics after trying the whole range (a test helper:
/// there is nothing sensible to go on with).
pub fn free_port() -> u16 {
    for _ in 0..SPAN {
        let port = next_candidate();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}
