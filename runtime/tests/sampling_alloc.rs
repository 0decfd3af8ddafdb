//! After construction the sampler never touches the heap: every stage works in
//! buffers sized to the vocabulary at `Sampler::new`. Counted with a global
//! allocator that tallies this thread's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use spinel_runtime::sampling::{Sampler, SamplingParams, StopStrings};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised
// thread-local `Cell` (no lazy initialisation, no destructor, no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCS.with(Cell::get)
}

/// Pseudo-random logits for step `t` (splitmix-style hash, no allocation).
fn fill_logits(logits: &mut [f32], t: u64) {
    for (i, l) in logits.iter_mut().enumerate() {
        let mut z = (i as u64 ^ (t << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        *l = ((z >> 40) as f32 / (1u64 << 24) as f32) * 12.0 - 6.0;
    }
}

#[test]
fn sampling_allocates_nothing_per_token() {
    const VOCAB: usize = 49_152; // SmolLM2's
    let configs = [
        SamplingParams::greedy(),
        SamplingParams::default(),
        SamplingParams {
            repeat_penalty: 1.3,
            frequency_penalty: 0.2,
            presence_penalty: 0.4,
            penalty_last_n: 16,
            ..SamplingParams::default()
        },
        // Full sort for top-p, no top-k.
        SamplingParams {
            top_k: 0,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.1,
            ..SamplingParams::default()
        },
        // Unsorted min-p path, and plain softmax.
        SamplingParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.1,
            min_keep: 3,
            ..SamplingParams::default()
        },
        SamplingParams::unfiltered(1.0, 7),
    ];
    // The counter sees allocations at all.
    let b = allocations();
    std::hint::black_box(vec![0u8; 10]);
    assert!(allocations() > b, "the counting allocator is not in use");

    let mut logits = vec![0.0f32; VOCAB];
    for params in configs {
        let mut s = Sampler::new(params.clone(), VOCAB).unwrap();
        s.accept_all(&[1, 2, 3]).unwrap();
        let before = allocations();
        // 100 tokens: the 16-token penalty window wraps several times.
        for t in 0..100 {
            fill_logits(&mut logits, t);
            let id = s.next(&logits).unwrap();
            assert!((id as usize) < VOCAB);
            let d = s.distribution(&logits).unwrap();
            assert!(!d.is_empty());
        }
        s.reset();
        assert_eq!(allocations() - before, 0, "{params:?} allocated");
    }
}

#[test]
fn stop_strings_allocate_nothing_for_token_sized_pieces() {
    // `new` reserves room for the longest stop string plus a 64-byte piece.
    let mut s = StopStrings::new(["<|im_end|>", "\n\nUser:"]).unwrap();
    let before = allocations();
    let mut released = 0;
    for _ in 0..1000 {
        for piece in ["Hello", " <|im", "_e", "nd|", "x", "\n\n", "Use", "r!"] {
            released += s.push(piece).text.len();
        }
    }
    assert_eq!(allocations() - before, 0);
    assert_eq!(released, 1000 * "Hello <|im_end|x\n\nUser!".len());
}
