//! Bounded, mutation-based fuzzing of every loader of outside bytes, on stable Rust.
//!
//! One `#[test]` per target: the seeds in `tests/fuzz/seeds/<target>/` are run, then mutations of
//! them (see `fuzz/mutate.rs`) for `TDA_FUZZ_SECS` seconds (default 2), each fed to the library
//! loader as the CLI calls it, on a worker thread under `catch_unwind` with a per-input time limit.
//! `Ok` and `Err` are fine; a panic or a hang is a crash: the input is written to
//! `target/fuzz-crashes/<target>-<hash>-<slot>` and the test fails naming it. Fixed crashes are kept
//! in `tests/fuzz/regressions/<target>/` and replayed by `regressions_do_not_crash`.
//!
//! The test binary's allocator refuses any single allocation over 1 GiB and more than 6 GiB live
//! (std then aborts with "memory allocation of N bytes failed"): a length read from a file that
//! is not checked against the file size shows up as an abort, and the input being run is in
//! `target/fuzz-crashes/<target>-running`.
//!
//! CI: `TDA_FUZZ_SECS=30 TDA_FUZZ_SEED=time cargo test --release -p tda-tests --test fuzz --
//! --nocapture --test-threads 1` (about 5 minutes; the seed is printed per target; keep
//! `target/fuzz-crashes/` as an artifact). See `tests/fuzz/README.md`.

#[path = "fuzz/dicts.rs"]
mod dicts;
#[path = "fuzz/harness.rs"]
mod harness;
#[path = "fuzz/mutate.rs"]
mod mutate;
#[path = "fuzz/seeds.rs"]
mod seeds;
#[path = "fuzz/targets.rs"]
mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator with a cap per allocation and on live bytes (see the module doc).
struct Capped;

const MAX_ONE: usize = 1 << 30;
const MAX_LIVE: usize = 6 << 30;
static LIVE: AtomicUsize = AtomicUsize::new(0);

impl Capped {
    /// Counts `n` more live bytes unless that passes [`MAX_LIVE`].
    fn reserve(&self, n: usize) -> bool {
        let before = LIVE.fetch_add(n, Ordering::Relaxed);
        if before + n > MAX_LIVE {
            LIVE.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }
    fn admit(&self, size: usize) -> bool {
        size <= MAX_ONE && self.reserve(size)
    }
}

// SAFETY: every call is forwarded to `System` unchanged, or refused with a null pointer, which
// the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && (new_size > MAX_ONE || !self.reserve(new_size - old)) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() && new_size > old {
            LIVE.fetch_sub(new_size - old, Ordering::Relaxed);
        } else if !p.is_null() && new_size < old {
            LIVE.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

macro_rules! fuzz_tests {
    ($($test:ident => $target:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                harness::fuzz(&targets::$target());
            }
        )*

        /// Every saved crash input of every target gives `Ok` or `Err` now.
        #[test]
        fn regressions_do_not_crash() {
            let mut n = 0;
            $( n += harness::replay(&targets::$target()); )*
            println!("replayed {n} regression inputs");
        }
    };
}

fuzz_tests! {
    fuzz_safetensors => safetensors,
    fuzz_config => config,
    fuzz_tokenizer => tokenizer,
    fuzz_model_folder => model_folder,
    fuzz_chat_template => chat_template,
    fuzz_corpus => corpus,
    fuzz_factors => factors,
    fuzz_index => index,
    fuzz_queries => queries,
}
