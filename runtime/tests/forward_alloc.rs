//! After a state is created, generating a token allocates nothing, on any of
//! the state's threads: every buffer lives in the state. Counted with a
//! global allocator that tallies allocations of every thread — so this test
//! runs without libtest's harness (`harness = false`), whose own thread
//! allocates when it reports a test running for over 60 seconds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use spinel_runtime::model::{KvType, Model, StateOptions};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; the counter is an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn smollm2() -> PathBuf {
    spinel_runtime::cache::test_model()
}

fn main() {
    generating_a_token_allocates_nothing();
    println!("test generating_a_token_allocates_nothing ... ok");
}

fn generating_a_token_allocates_nothing() {
    let path = smollm2();
    assert!(
        path.is_file(),
        "the SmolLM2 test model is missing at {}",
        path.display()
    );
    check(&path);
    // With the online rotations too (an FWHT of the q/k heads and of the
    // SwiGLU output on every token). In the same test: the counter counts
    // every thread, so nothing else may run while a check measures.
    online_rotations(&path);
}

fn online_rotations(path: &std::path::Path) {
    use spinel_runtime::gguf::MappedGguf;
    use spinel_runtime::quantize::rotate::{RotateOptions, rotate_file};
    use spinel_runtime::quantize::{FileType, quantize_file};
    let dir = std::env::temp_dir().join(format!("spinel-alloc-rot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (base, rotated) = (dir.join("base.gguf"), dir.join("rot.gguf"));
    // SAFETY: read-only files nothing else writes.
    let m = unsafe { MappedGguf::open(path) }.unwrap();
    quantize_file(m.file(), &base, FileType::F32, 2, None, &mut |_| {}).unwrap();
    // SAFETY: as above.
    let m = unsafe { MappedGguf::open(&base) }.unwrap();
    let opts = RotateOptions {
        online: true,
        keep_outliers: 0,
        ..RotateOptions::default()
    };
    rotate_file(m.file(), &rotated, &opts, 2).unwrap();
    let r = Model::load(&rotated).unwrap().config().rotation;
    assert!(r.r3 && r.r4, "{r:?}");
    check(&rotated);
    let _ = std::fs::remove_dir_all(&dir);
}

fn check(path: &std::path::Path) {
    let model = Model::load(path).unwrap();
    // Every cache type (and keys and values of different types): the
    // blocked ones (Q8_0, Q4_0) convert values through scratch too.
    let kv_types = [
        (KvType::F16, KvType::F16),
        (KvType::F32, KvType::F32),
        (KvType::Q8_0, KvType::Q8_0),
        (KvType::Q4_0, KvType::Q4_0),
        (KvType::Q8_0, KvType::F16),
        (KvType::F16, KvType::Q4_0),
    ];
    for (threads, (k, v)) in [1, 2]
        .into_iter()
        .flat_map(|t| kv_types.into_iter().map(move |kv| (t, kv)))
    {
        let opts = StateOptions {
            n_ctx: Some(256),
            kv_type: k,
            kv_type_v: Some(v),
            n_threads: Some(threads),
            ..StateOptions::default()
        };
        let mut state = model.new_state_with(&opts).unwrap();
        let prompt: Vec<u32> = (0..40u32).map(|i| i * 101 + 7).collect();
        model.forward(&mut state, &prompt).unwrap();
        let before = ALLOCS.load(Ordering::SeqCst);
        let mut token = 1u32;
        for _ in 0..32 {
            let logits = model.forward(&mut state, &[token]).unwrap();
            token = (logits
                .iter()
                .map(|v| v.to_bits())
                .fold(0u32, u32::wrapping_add))
                % 49_152;
        }
        // A prompt batch allocates nothing either.
        model.forward(&mut state, &prompt[..20]).unwrap();
        let after = ALLOCS.load(Ordering::SeqCst);
        assert_eq!(
            after - before,
            0,
            "{threads} threads, K {k:?} V {v:?}: allocations while generating"
        );
    }
}
