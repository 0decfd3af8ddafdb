//! The residency plan on small synthetic models: what a budget keeps
//! resident and streams, and that streaming never changes the logits.
//! (Running under a real memory limit: `tests/streaming.rs`.)

use spinel_runtime::model::{KvType, LoadOptions, Model, StateOptions};
use spinel_runtime::synthetic::Spec;

fn tiny(moe: bool) -> Spec {
    Spec {
        name: if moe { "tiny-moe" } else { "tiny-dense" },
        n_vocab: 256,
        dim: 128,
        n_layer: 6,
        n_head: 4,
        n_head_kv: 2,
        n_ff: 256,
        moe: moe.then_some((8, 1, 256)),
        seed: 7,
    }
}

fn write(spec: &Spec) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("spinel-residency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.gguf", spec.name));
    spec.write(&path, None).unwrap();
    path
}

/// Greedy tokens and the logits of the last step.
fn run(model: &Model<'_>) -> (Vec<u32>, Vec<f32>) {
    let opts = StateOptions {
        n_ctx: Some(32),
        kv_type: KvType::F32,
        n_threads: Some(2),
        ..StateOptions::default()
    };
    let mut state = model.new_state_with(&opts).unwrap();
    let mut input = vec![1u32, 17, 42, 99];
    let mut tokens = Vec::new();
    let mut last = Vec::new();
    for _ in 0..6 {
        let logits = model.forward(&mut state, &input).unwrap();
        let next = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        last = logits.to_vec();
        tokens.push(next);
        input = vec![next];
    }
    (tokens, last)
}

fn load(path: &std::path::Path, budget: Option<u64>) -> Model<'static> {
    Model::load_with(
        path,
        &LoadOptions {
            memory_budget: budget,
        },
    )
    .unwrap()
}

#[test]
fn budgets_plan_residency_and_never_change_the_logits() {
    for moe in [false, true] {
        let spec = tiny(moe);
        let path = write(&spec);
        let free = load(&path, None);
        let r = free.residency();
        assert_eq!(r.budget, None);
        assert!(!r.streaming);
        let weights = r.weights_bytes;
        assert!(weights > 0);
        let (tokens, logits) = run(&free);

        // Room for everything: nothing streamed.
        let all = load(&path, Some(weights * 4 + (64 << 20)));
        assert!(!all.residency().streaming, "{}", spec.name);

        // Room for three quarters of the weights (the budget less its
        // eighth for the KV cache): the output and some layers resident,
        // the rest streamed.
        let budget = weights * 3 / 4 * 8 / 7;
        let half = load(&path, Some(budget));
        let r = half.residency();
        assert!(r.streaming, "{}: {r:?}", spec.name);
        assert_eq!(r.reserve, budget / 8);
        assert!(
            r.resident_bytes <= budget - r.reserve,
            "{}: {r:?}",
            spec.name
        );
        if moe {
            // Dense parts are small here: all resident, experts paged.
            assert_eq!(r.streamed_layers, 0, "{r:?}");
            assert!(r.expert_cache_capacity < r.experts_total, "{r:?}");
            assert!(r.expert_cache_capacity >= 1, "{r:?}");
        } else {
            assert!(r.output_resident, "{r:?}");
            assert!(r.streamed_layers > 0 && r.resident_layers > 0, "{r:?}");
            assert_eq!(r.resident_layers + r.streamed_layers, spec.n_layer);
            assert!(r.streamed_bytes_per_token > 0);
        }
        assert_eq!(
            run(&half),
            (tokens.clone(), logits.clone()),
            "{}",
            spec.name
        );

        // Almost nothing: everything streamed, the logits still the same.
        let none = load(&path, Some(weights / 10));
        let r = none.residency();
        assert!(r.streaming);
        assert_eq!(r.resident_layers, 0, "{r:?}");
        assert_eq!(run(&none), (tokens, logits), "{}", spec.name);
        if moe {
            let r = none.residency();
            // 6 passes over 6 layers; the prompt batch may route to
            // several experts per layer.
            let looked = r.expert_hits + r.expert_misses;
            assert!((36..=54).contains(&looked), "{r:?}");
            assert!(r.expert_misses > 0 && r.expert_hit_rate().is_some());
        }
        std::fs::remove_file(&path).unwrap();
        let _ = std::fs::remove_dir(path.parent().unwrap());
    }
}

#[test]
fn a_budget_caps_the_default_context_by_what_the_weights_leave() {
    use spinel_runtime::engine::{Engine, SessionOptions};
    let path = spinel_runtime::cache::test_model();
    let free = Engine::load(&path).unwrap();
    let opts = SessionOptions::default();
    let per_position = free.kv_bytes_per_position(&opts) as u64;
    let weights = free.model().residency().weights_bytes;
    let n_ctx_train = free.model().config().n_ctx_train;
    assert_eq!(free.context_length(&opts).unwrap(), n_ctx_train);

    // All weights fit: the KV cache gets half of what they leave.
    let budget = 2 * weights;
    let e = Engine::load_with(
        &path,
        &LoadOptions {
            memory_budget: Some(budget),
        },
    )
    .unwrap();
    assert!(!e.model().residency().streaming);
    let free_bytes = (budget - weights).max(budget / 8);
    assert_eq!(
        e.context_length(&opts).unwrap() as u64,
        (free_bytes / 2 / per_position).min(n_ctx_train as u64)
    );
    // Four sessions side by side (a server's slots) share it.
    let four = SessionOptions {
        sessions: 4,
        ..SessionOptions::default()
    };
    let each = e.context_length(&four).unwrap() as u64;
    assert_eq!(
        each,
        (free_bytes / 2 / 4 / per_position).min(n_ctx_train as u64)
    );
    assert!(4 * each * per_position <= free_bytes / 2, "{each}");
    // Streamed: half of the reserve.
    let budget = weights / 2;
    let e = Engine::load_with(
        &path,
        &LoadOptions {
            memory_budget: Some(budget),
        },
    )
    .unwrap();
    assert!(e.model().residency().streaming);
    assert_eq!(
        e.context_length(&opts).unwrap() as u64,
        (budget / 8 / 2 / per_position).min(n_ctx_train as u64)
    );
}
