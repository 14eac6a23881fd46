//! Counting heap allocations per thread, to prove that a hot path (a read
//! the near cache answers) allocates nothing.
//!
//! A test binary installs [`CountingAllocator`] as its global allocator:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: larder_test_support::CountingAllocator = larder_test_support::CountingAllocator;
//! ```
//!
//! and wraps the code under test in [`count_allocations`]. Counts are per
//! thread, so the harness and other tests never pollute a measurement.
//! Without the allocator installed every count is zero: a test asserting
//! "zero allocations" also shows that something it does allocate is
//! counted, so that it cannot pass vacuously.
//!
//! The one unsafe code of the workspace's tests: each `GlobalAlloc` call
//! is forwarded to `System` unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting the allocations (and reallocations) of
/// a thread inside [`count_allocations`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

fn note() {
    // `try_with`: a thread's locals may be gone while it exits. They are
    // const-initialised, so reading them never allocates.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments,
// so `System`'s guarantees are this allocator's; counting touches only
// thread-local cells.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: `ptr` came from this allocator, that is from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` and answers its result with the heap allocations (and
/// reallocations) it made on this thread. Zero unless
/// [`CountingAllocator`] is the binary's global allocator.
pub fn count_allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (out, ALLOCATIONS.with(Cell::get))
}
