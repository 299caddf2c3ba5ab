//! A global allocator for binaries that handle whole images: the system allocator, asking the
//! kernel to back large blocks with transparent huge pages.
//!
//! A unit that reads, calibrates and writes a 1024 × 2048 CCD touches a dozen fresh 8 MB
//! buffers; in 4 KiB pages each costs ~2,000 page faults (over 10 % of the single-frame unit's
//! CPU time, issue 13), in 2 MiB pages four. Where transparent huge pages are `madvise` or
//! `always` (`/sys/kernel/mm/transparent_hugepage/enabled`), blocks of at least [`LARGE`] bytes are advised
//! `MADV_HUGEPAGE` before they are first touched; where they are `never`, or on another OS,
//! this is the system allocator. Values are never changed: only how memory is mapped.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOCATOR: skypipe_engine::HugePageAlloc = skypipe_engine::HugePageAlloc;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks at least this large (bytes) are advised to use huge pages.
pub const LARGE: usize = 4 << 20;

/// The size of a transparent huge page on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// [`System`], with blocks of at least [`LARGE`] bytes advised `MADV_HUGEPAGE` (Linux).
#[derive(Debug, Default, Clone, Copy)]
pub struct HugePageAlloc;

/// Advises the whole huge pages inside `[p, p + size)`.
fn advise(p: *mut u8, size: usize) {
    #[cfg(target_os = "linux")]
    {
        let start = (p as usize).next_multiple_of(HUGE_PAGE);
        let end = (p as usize + size) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside a block this allocator just handed out; the advice
            // changes how its pages are mapped, never their contents. Failure (e.g. a kernel
            // without huge pages) leaves ordinary pages, so the result is ignored.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, size);
}

// SAFETY: every block comes from `System` with the caller's layout and goes back to it; the
// advice and the zeroing below only touch the block itself.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if layout.size() >= LARGE && !p.is_null() {
            advise(p, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // A fresh large block comes zeroed from the kernel and untouched (calloc does not
        // write it), so the advice still precedes its first touch; pages never touched are
        // never backed.
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if layout.size() >= LARGE && !p.is_null() {
            advise(p, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if new_size >= LARGE && !p.is_null() {
            advise(p, new_size);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_blocks_round_trip_zeroed_and_reallocated() {
        let a = HugePageAlloc;
        for size in [16, LARGE - 1, LARGE, 3 * LARGE + 5] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: non-zero size; every block is freed with its layout.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                let s = std::slice::from_raw_parts_mut(p, size);
                assert!(s.iter().all(|&b| b == 0), "{size}: not zeroed");
                s[0] = 7;
                s[size - 1] = 9;
                let q = a.realloc(p, layout, size * 2);
                assert!(!q.is_null());
                assert_eq!(
                    (*q, *q.add(size - 1)),
                    (7, 9),
                    "{size}: realloc kept the bytes"
                );
                a.dealloc(q, Layout::from_size_align(size * 2, 64).unwrap());
                let r = a.alloc(layout);
                assert!(!r.is_null() && (r as usize).is_multiple_of(64));
                a.dealloc(r, layout);
            }
        }
    }
}
