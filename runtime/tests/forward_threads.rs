//! The forward pass on 1, 2 and 3 threads gives bit-identical logits for the
//! real SmolLM2 model: matrix products and attention are cut into tiles that
//! depend on the batch, never on the thread count, and every sum is taken
//! in the same order whichever thread computes it. So does any split of a
//! prompt into batches of at least 8 positions (the register-blocked
//! kernels compute each element the same way at any batch size from there;
//! single positions go through the one-row kernels, whose sums are ordered
//! differently).

use std::path::PathBuf;

use spinel_runtime::model::{KvType, Model, StateOptions};

/// `$SPINEL_TEST_MODEL`, else where scripts/fetch-model.sh puts the model.
fn smollm2() -> PathBuf {
    let path = spinel_runtime::cache::test_model();
    assert!(
        path.is_file(),
        "the SmolLM2 test model is missing at {}: run scripts/fetch-model.sh",
        path.display()
    );
    path
}

/// Logits after a 75-token prompt (in batches of `n_batch`) and after each
/// of 6 single tokens.
fn run(model: &Model<'_>, kv: (KvType, KvType), n_threads: usize, n_batch: usize) -> Vec<Vec<f32>> {
    let opts = StateOptions {
        n_ctx: Some(128),
        kv_type: kv.0,
        kv_type_v: Some(kv.1),
        n_batch,
        n_threads: Some(n_threads),
        ..StateOptions::default()
    };
    let mut state = model.new_state_with(&opts).unwrap();
    assert_eq!(state.n_threads(), n_threads);
    let prompt: Vec<u32> = (0..75u32).map(|i| (i * 7919 + 13) % 49_152).collect();
    let mut out = vec![model.forward(&mut state, &prompt).unwrap().to_vec()];
    for i in 0..6u32 {
        out.push(model.forward(&mut state, &[i * 1000 + 5]).unwrap().to_vec());
    }
    out
}

#[test]
fn thread_counts_give_identical_logits() {
    let model = Model::load(smollm2()).unwrap();
    for kv in [
        (KvType::F16, KvType::F16),
        (KvType::F32, KvType::F32),
        (KvType::Q8_0, KvType::Q8_0),
        (KvType::Q4_0, KvType::Q4_0),
        (KvType::Q8_0, KvType::Q4_0),
    ] {
        // Batches of 32, 32 and 11 positions.
        let one = run(&model, kv, 1, 32);
        for t in [2, 3] {
            let many = run(&model, kv, t, 32);
            for (step, (a, b)) in one.iter().zip(&many).enumerate() {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{kv:?}: {t} threads differ from 1 at step {step}");
            }
        }
    }
}

#[test]
fn batch_splits_of_at_least_8_give_identical_logits() {
    let model = Model::load(smollm2()).unwrap();
    let whole = run(&model, (KvType::F16, KvType::F16), 2, 75);
    // 25 + 25 + 25, 16 × 4 + 11, 8 × 9 + 3 would not do (a batch of 3).
    for n_batch in [25, 16] {
        let split = run(&model, (KvType::F16, KvType::F16), 2, n_batch);
        for (step, (a, b)) in whole.iter().zip(&split).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "batches of {n_batch} differ from one batch at step {step}"
            );
        }
    }
}
