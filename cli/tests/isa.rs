//! `spinel isa --json`: the selected ISA, every supported one, and the
//! kernel table of the selected ISA, pinned by `SPINEL_ISA` in turn.

use std::process::Command;

use serde_json::Value as Json;

const SPINEL: &str = env!("CARGO_BIN_EXE_spinel");

fn isa_json(pin: Option<&str>) -> Json {
    let mut cmd = Command::new(SPINEL);
    cmd.args(["isa", "--json"]);
    match pin {
        Some(isa) => cmd.env("SPINEL_ISA", isa),
        None => cmd.env_remove("SPINEL_ISA"),
    };
    let out = cmd.output().expect("running spinel isa");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn json_reports_the_kernel_table_of_each_pinned_isa() {
    let best = isa_json(None);
    let supported: Vec<String> = best["supported"]
        .as_array()
        .expect("supported")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(supported.first().map(String::as_str), Some("scalar"));
    // Without a pin, the best supported ISA is selected.
    assert_eq!(
        best["selected"].as_str(),
        supported.last().map(String::as_str)
    );
    for isa in &supported {
        let j = isa_json(Some(isa));
        assert_eq!(j["selected"].as_str(), Some(isa.as_str()));
        let kernels = j["kernels"].as_object().expect("kernels");
        for ty in [
            "F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
            "Q6_K",
        ] {
            let k = &kernels[ty];
            for f in ["vec_dot", "gemv", "gemm"] {
                assert!(k[f].is_boolean(), "{isa} {ty}: {f} missing in {k}");
            }
            // Every table has a dot product for every type; the scalar one
            // has nothing register-blocked.
            if isa == "scalar" {
                assert_eq!(k["vec_dot"], true, "{isa} {ty}");
                assert_eq!(k["gemm"], false, "{isa} {ty}");
                assert_eq!(k["gemv"], false, "{isa} {ty}");
            }
        }
        // The grid i-quants: an AVX2 vec_dot inherited by every x86 level,
        // the scalar one on ARM (NEON inherits it), no blocked kernels.
        for ty in [
            "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M",
        ] {
            let own = isa == "scalar" || isa.starts_with("avx");
            assert_eq!(
                kernels[ty],
                serde_json::json!({"vec_dot": own, "gemv": false, "gemm": false}),
                "{isa} {ty}"
            );
        }
        // The x86 levels have their own Q4_0 kernels of every kind.
        if isa.starts_with("avx") {
            assert_eq!(
                kernels["Q4_0"],
                serde_json::json!({"vec_dot": true, "gemv": true, "gemm": true}),
                "{isa}"
            );
        }
    }
    // An ISA this CPU lacks, or an unknown name, is reported, not obeyed.
    let out = Command::new(SPINEL)
        .args(["isa", "--json"])
        .env("SPINEL_ISA", "no-such-isa")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-isa"));
}
