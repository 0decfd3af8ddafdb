//! End-to-end tests of `spinel convert`: the built binary on the shared tiny
//! models (what it writes, what it says, how it fails). The conversion
//! itself is tested in depth in `runtime/tests/convert*.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use spinel_quant::GgmlType;
use spinel_runtime::gguf::GgufFile;

const SPINEL: &str = env!("CARGO_BIN_EXE_spinel");

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/models")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("spinel-cli-convert")
        .join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spinel(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(SPINEL)
        .args(args)
        .output()
        .expect("running spinel")
}

#[test]
fn converts_a_model_and_says_what_it_did() {
    let out = scratch("ok").join("m.gguf");
    let run = spinel(&[
        "convert".as_ref(),
        model("d_llama3_1").as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--outtype".as_ref(),
        "q8_0".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("no tokenizer.json"), "{stderr}");
    assert!(
        stderr.contains("LlamaForCausalLM") && stderr.contains("wrote"),
        "{stderr}"
    );
    let bytes = std::fs::read(&out).unwrap();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(
        f.metadata().get_str("general.architecture").unwrap(),
        "llama"
    );
    assert_eq!(f.metadata().get_u32("general.file_type").unwrap(), 7);
    assert_eq!(
        f.tensor("blk.0.attn_q.weight").unwrap().ggml_type(),
        GgmlType::Q8_0
    );
    assert_eq!(
        f.tensor("rope_freqs.weight").unwrap().ggml_type(),
        GgmlType::F32
    );
    assert!(f.tensor("output.weight").is_some());
}

#[test]
fn default_out_type_is_f16() {
    let out = scratch("default").join("m.gguf");
    let run = spinel(&[
        "convert".as_ref(),
        model("e_llama3_2_tied").as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.metadata().get_u32("general.file_type").unwrap(), 1);
    assert_eq!(
        f.tensor("token_embd.weight").unwrap().ggml_type(),
        GgmlType::F16
    );
    assert!(f.tensor("output.weight").is_none(), "tied embeddings");
}

#[test]
fn bad_arguments_and_bad_input_fail_clearly() {
    let dir = scratch("bad");
    let out = dir.join("m.gguf");
    let run = spinel(&[
        "convert".as_ref(),
        model("a_llama1").as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--outtype".as_ref(),
        "q4_0".as_ref(),
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("q4_0") && stderr.contains("q8_0"),
        "{stderr}"
    );

    // An unsupported architecture.
    let ckpt = dir.join("mistral");
    std::fs::create_dir_all(&ckpt).unwrap();
    let cfg = std::fs::read_to_string(model("a_llama1").join("config.json"))
        .unwrap()
        .replace("LlamaForCausalLM", "MistralForCausalLM");
    std::fs::write(ckpt.join("config.json"), cfg).unwrap();
    std::fs::copy(
        model("a_llama1").join("model.safetensors"),
        ckpt.join("model.safetensors"),
    )
    .unwrap();
    let run = spinel(&[
        "convert".as_ref(),
        ckpt.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("unsupported architecture") && stderr.contains("MistralForCausalLM"),
        "{stderr}"
    );
    assert!(!out.exists());

    // Not a checkpoint at all.
    let run = spinel(&[
        "convert".as_ref(),
        dir.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("config.json"));
}
