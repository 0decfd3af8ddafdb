//! End-to-end tests of `spinel logits`: the built binary converts a shared
//! tiny model (`spinel convert --outtype f32`) and prints its logits, which
//! must match HF transformers' (`reference.json`) to 1e-4. The forward pass
//! itself is tested in depth in `runtime/tests/forward.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;
use spinel_quant::GgmlType;
use spinel_runtime::gguf::MappedGguf;

mod common;
use common::{max_abs_diff, ok};

const SPINEL: &str = env!("CARGO_BIN_EXE_spinel");

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata")
}

fn spinel(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(SPINEL)
        .args(args)
        .output()
        .expect("running spinel")
}

/// `model` converted to an F32 GGUF by the binary, in a fresh scratch folder.
fn converted(model: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("spinel-cli-logits")
        .join(format!("{}-{model}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("m.gguf");
    let run = spinel(&[
        "convert".as_ref(),
        testdata().join("models").join(model).as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--outtype".as_ref(),
        "f32".as_ref(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

fn prompt(reference: &Json, name: &str) -> (String, Vec<f64>) {
    let p = &reference["prompts"][name];
    let ids: Vec<String> = p["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let logits = p["last_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    (ids.join(","), logits)
}

#[test]
fn json_logits_match_transformers() {
    for model in ["c_llama3", "f_llama4_text"] {
        let gguf = converted(model);
        let reference: Json = serde_json::from_slice(
            &std::fs::read(testdata().join("models").join(model).join("reference.json")).unwrap(),
        )
        .unwrap();
        for name in ["len7", "len40"] {
            let (ids, want) = prompt(&reference, name);
            let run = spinel(&[
                "logits".as_ref(),
                "-m".as_ref(),
                gguf.as_os_str(),
                "--prompt-ids".as_ref(),
                ids.as_ref(),
                "--json".as_ref(),
            ]);
            assert!(
                run.status.success(),
                "{}",
                String::from_utf8_lossy(&run.stderr)
            );
            let out: Json = serde_json::from_slice(&run.stdout).expect("one JSON object");
            let got = out["logits"].as_array().expect("logits array");
            assert_eq!(got.len(), want.len(), "{model} {name}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let g = g.as_f64().unwrap();
                assert!((g - w).abs() < 1e-4, "{model} {name} logit {i}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn text_output_lists_the_largest_and_errors_are_named() {
    let gguf = converted("a_llama1");
    let run = spinel(&[
        "logits".as_ref(),
        "-m".as_ref(),
        gguf.as_os_str(),
        "--prompt-ids".as_ref(),
        "1,5,9".as_ref(),
        "--top".as_ref(),
        "3".as_ref(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("512 logits after 3 tokens"), "{stdout}");
    assert_eq!(lines.len(), 4, "{stdout}");
    let values: Vec<f64> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(values.windows(2).all(|w| w[0] >= w[1]), "{stdout}");

    for (ids, ctx, expect) in [
        ("1,512", None, "out of range"),
        ("1,2,3", Some("2"), "do not fit in the context"),
    ] {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "logits".as_ref(),
            "-m".as_ref(),
            gguf.as_os_str(),
            "--prompt-ids".as_ref(),
            ids.as_ref(),
        ];
        if let Some(c) = ctx {
            args.push("-c".as_ref());
            args.push(c.as_ref());
        }
        let run = spinel(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success());
        assert!(stderr.contains(expect), "{ids}: {stderr}");
    }
    let run = spinel(&[
        "logits".as_ref(),
        "-m".as_ref(),
        gguf.as_os_str(),
        "--prompt-ids".as_ref(),
        "1".as_ref(),
        "--kv-type".as_ref(),
        "q4_1".as_ref(),
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("unknown KV cache type \"q4_1\" (f32, f16, q8_0, q4_0)"),
        "{stderr}"
    );
    // This model's heads (16) are not whole Q4_0 blocks.
    let run = spinel(&[
        "logits".as_ref(),
        "-m".as_ref(),
        gguf.as_os_str(),
        "--prompt-ids".as_ref(),
        "1".as_ref(),
        "-ctv".as_ref(),
        "q4_0".as_ref(),
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("Q4_0 V cache needs a head size that is a multiple of 32")
            && stderr.contains("is 16"),
        "{stderr}"
    );
}

/// `--kv-type` sets both cache types, `--cache-type-k`/`-ctk` and
/// `--cache-type-v`/`-ctv` one each, and they reach the forward pass, as
/// does `--kv-rotation`.
#[test]
fn kv_cache_type_flags_choose_the_cache() {
    // Heads of 64: every cache type fits.
    let gguf = converted("d_llama3_1");
    let ids = "1,17,33,60,2,99,150,7,8,300,41,5,77";
    let logits = |flags: &[&str]| -> Vec<f32> {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "logits".as_ref(),
            "-m".as_ref(),
            gguf.as_os_str(),
            "--prompt-ids".as_ref(),
            ids.as_ref(),
            "--json".as_ref(),
        ];
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        let run = spinel(&args);
        assert!(
            run.status.success(),
            "{flags:?}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let out: Json = serde_json::from_slice(&run.stdout).expect("one JSON object");
        let v = out["logits"].as_array().expect("logits array");
        v.iter().map(|x| x.as_f64().unwrap() as f32).collect()
    };
    let f32_cache = logits(&[]);
    let mixed = logits(&["-ctk", "q4_0", "-ctv", "q8_0"]);
    assert_ne!(mixed, f32_cache);
    assert_eq!(
        mixed,
        logits(&["--cache-type-k", "q4_0", "--cache-type-v", "q8_0"])
    );
    assert_eq!(
        mixed,
        logits(&["--kv-type", "q8_0", "--cache-type-k", "q4_0"])
    );
    let q4 = logits(&["--kv-type", "q4_0"]);
    assert_eq!(q4, logits(&["-ctk", "q4_0", "-ctv", "q4_0"]));
    assert_ne!(q4, mixed);
    // Only the keys: values stay f32 (logits' default).
    let k_only = logits(&["-ctk", "q4_0"]);
    assert_eq!(k_only, logits(&["-ctk", "q4_0", "-ctv", "f32"]));
    assert_ne!(k_only, mixed);
    // Lossy, but close: the largest logit moves by less than the q4_0 cache
    // error the runtime tests bound.
    let diff = max_abs_diff(&k_only, &f32_cache);
    assert!(diff > 0.0 && diff < 2.5, "{diff}");
    // --kv-rotation: auto rotates q/k for a quantized K cache and v for a
    // quantized V cache (on: both always; off: neither).
    assert_eq!(q4, logits(&["--kv-type", "q4_0", "--kv-rotation", "on"]));
    assert_ne!(q4, logits(&["--kv-type", "q4_0", "--kv-rotation", "off"]));
    assert_ne!(k_only, logits(&["-ctk", "q4_0", "--kv-rotation", "off"]));
    assert_ne!(k_only, logits(&["-ctk", "q4_0", "--kv-rotation", "on"]));
    assert_eq!(f32_cache, logits(&["--kv-rotation", "off"]));
    let turned = logits(&["--kv-rotation", "on"]);
    assert_ne!(turned, f32_cache);
    let diff = max_abs_diff(&turned, &f32_cache);
    // It cancels in q·k: f32 rounding only (an f32 model here).
    assert!(diff < 1e-3, "{diff}");
    let run = spinel(&[
        "logits".as_ref(),
        "-m".as_ref(),
        gguf.as_os_str(),
        "--prompt-ids".as_ref(),
        ids.as_ref(),
        "--kv-rotation".as_ref(),
        "sometimes".as_ref(),
    ]);
    assert!(!run.status.success());
}

/// Standard base64 (the reference logits are stored that way).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | (val(c) << (18 - 6 * i)));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// Converts the dev vision model `name` with `spinel convert` (m.gguf and
/// m.mmproj.gguf) into a fresh directory of its own for `test`.
fn convert_vision(name: &str, test: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("spinel-cli-logits")
        .join(format!("{}-{name}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("m.gguf");
    let model_dir = testdata().join("vision/dev").join(name);
    let run = spinel(&[
        "convert".as_ref(),
        model_dir.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--outtype".as_ref(),
        "f32".as_ref(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mmproj = dir.join("m.mmproj.gguf");
    assert!(mmproj.is_file(), "no mmproj written");
    (dir, out, mmproj)
}

/// `spinel logits --json` for the reference prompt `name` of the dev
/// vision model (with its image, unless `text_only`): the largest
/// difference from transformers' last logits.
fn vision_logits_diff(model: &str, gguf: &Path, mmproj: &Path, name: &str) -> f32 {
    let (got, want) = vision_logits(model, gguf, mmproj, name);
    max_abs_diff(&got, &want)
}

/// `spinel logits --json` for the reference prompt `name` of the dev
/// vision model: (Spinel's last logits, transformers').
fn vision_logits(model: &str, gguf: &Path, mmproj: &Path, name: &str) -> (Vec<f32>, Vec<f32>) {
    let vision = testdata().join("vision");
    let reference: Json = serde_json::from_slice(
        &std::fs::read(vision.join("dev").join(model).join("reference.json")).unwrap(),
    )
    .unwrap();
    let p = &reference["prompts"][name];
    let image = vision.join("images").join(name);
    let mut args: Vec<&std::ffi::OsStr> = vec!["logits".as_ref(), "-m".as_ref(), gguf.as_os_str()];
    if name != "text_only" {
        args.extend::<[&std::ffi::OsStr; 4]>([
            "--mmproj".as_ref(),
            mmproj.as_os_str(),
            "--image".as_ref(),
            image.as_os_str(),
        ]);
    }
    args.extend::<[&std::ffi::OsStr; 3]>([
        "--prompt".as_ref(),
        p["prompt_text"].as_str().unwrap().as_ref(),
        "--json".as_ref(),
    ]);
    let run = spinel(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got: Vec<f32> =
        serde_json::from_slice::<Json>(&run.stdout).expect("one JSON object")["logits"]
            .as_array()
            .expect("logits array")
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
    let want: Vec<f32> = base64_decode(p["last_logits_b64"].as_str().unwrap())
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got.len(), want.len());
    (got, want)
}

#[test]
fn llama4_image_prompt_logits_match_transformers() {
    // `spinel logits` tokenizes the chat-formatted prompt, expands
    // <|image|>, runs the vision tower and puts its features at the
    // <|patch|> tokens.
    let (dir, gguf, mmproj) = convert_vision("llama4_vision", "logits");
    let d = vision_logits_diff("llama4_vision", &gguf, &mmproj, "landscape_300x200.png");
    assert!(d <= 1e-3, "last logits differ by {d}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mllama_image_prompt_logits_match_transformers() {
    // The image's features become the cross-attention layers' keys and
    // values; the text-only prompt skips those layers.
    let (dir, gguf, mmproj) = convert_vision("mllama", "logits");
    for name in [
        "landscape_300x200.png",
        "portrait_160x400.png",
        "small_64x48.jpg",
        "text_only",
    ] {
        let d = vision_logits_diff("mllama", &gguf, &mmproj, name);
        eprintln!("mllama {name}: last logits max |diff| {d:e}");
        // The JPEG decoder is not PIL's: pixels differ by up to a few
        // uint8 levels (vision.rs checks these logits to 1e-3 on PIL's
        // decoded pixels), which moves these logits by about 0.03.
        let tol = if name.ends_with(".jpg") { 0.1 } else { 1e-3 };
        assert!(d <= tol, "{name}: last logits differ by {d}");
    }
    // The other family's mmproj does not fit: a clear error.
    let (dir4, _, mmproj4) = convert_vision("llama4_vision", "mismatch");
    let prompt = "<|begin_of_text|><|image|>What?";
    let image = testdata().join("vision/images/small_64x48.jpg");
    let run = spinel(&[
        "logits".as_ref(),
        "-m".as_ref(),
        gguf.as_os_str(),
        "--mmproj".as_ref(),
        mmproj4.as_os_str(),
        "--image".as_ref(),
        image.as_os_str(),
        "--prompt".as_ref(),
        prompt.as_ref(),
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("llama4 projector does not fit a mllama text model"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir4);
}

/// `spinel run --temp 0 -n 8 --ignore-eos --json` with `--mmproj` and one
/// `--image` per path, on the reference prompt text of `name`.
fn run_with_images(gguf: &Path, mmproj: &Path, images: &[PathBuf], prompt: &str) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "run".as_ref(),
        "-m".as_ref(),
        gguf.as_os_str(),
        "--mmproj".as_ref(),
        mmproj.as_os_str(),
    ];
    for image in images {
        args.extend::<[&std::ffi::OsStr; 2]>(["--image".as_ref(), image.as_os_str()]);
    }
    args.extend::<[&std::ffi::OsStr; 9]>([
        "--prompt".as_ref(),
        prompt.as_ref(),
        "--temp".as_ref(),
        "0".as_ref(),
        "-n".as_ref(),
        "8".as_ref(),
        "--ignore-eos".as_ref(),
        "--json".as_ref(),
        "-t".as_ref(),
    ]);
    args.push("2".as_ref());
    spinel(&args)
}

const IMAGE_NAMES: [&str; 3] = [
    "landscape_300x200.png",
    "portrait_160x400.png",
    "small_64x48.jpg",
];

/// The reference data of the dev vision model `model`.
fn vision_reference(model: &str) -> Json {
    let path = testdata()
        .join("vision/dev")
        .join(model)
        .join("reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Ids of a JSON array.
fn ids(v: &Json) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn run_with_an_image_generates_the_reference_greedy_tokens() {
    // Both families, on the PNG images (the JPEG decoder is not PIL's):
    // the expanded prompt is the processor's, and every greedy token is
    // transformers' (every reference step's margin is above 1e-2).
    let vision = testdata().join("vision");
    for model in ["mllama", "llama4_vision"] {
        let (dir, gguf, mmproj) = convert_vision(model, "run");
        let reference = vision_reference(model);
        for name in ["landscape_300x200.png", "portrait_160x400.png"] {
            let p = &reference["prompts"][name];
            let image = vision.join("images").join(name);
            let run = run_with_images(&gguf, &mmproj, &[image], p["prompt_text"].as_str().unwrap());
            assert!(
                run.status.success(),
                "{model} {name}: {}",
                String::from_utf8_lossy(&run.stderr)
            );
            let doc: Json = serde_json::from_slice(&run.stdout).expect("one JSON object");
            assert_eq!(
                ids(&doc["prompt_ids"]),
                ids(&p["input_ids"]),
                "{model} {name}"
            );
            let margins = p["greedy"]["step_top1_minus_top2"].as_array().unwrap();
            assert!(margins.iter().all(|m| m.as_f64().unwrap() > 1e-2));
            assert_eq!(
                ids(&doc["generated_ids"]),
                ids(&p["greedy"]["generate"]),
                "{model} {name}"
            );
            let ms = doc["stats"]["image_encode_ms"].as_f64().unwrap();
            assert!(ms > 0.0, "{model} {name}: image_encode_ms {ms}");
        }
        // Two images for a prompt with one <|image|>: a named error.
        let p = &reference["prompts"]["landscape_300x200.png"];
        let image = vision.join("images/landscape_300x200.png");
        let run = run_with_images(
            &gguf,
            &mmproj,
            &[image.clone(), image],
            p["prompt_text"].as_str().unwrap(),
        );
        assert!(!run.status.success());
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains("image"), "{model}: {err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn images_on_a_text_only_model_are_refused() {
    // SmolLM2 (arch llama, with its tokenizer).
    let text = spinel_runtime::cache::test_model();
    let (dir, _, mmproj) = convert_vision("mllama", "text-only");
    let image = testdata().join("vision/images/small_64x48.jpg");
    // Without an mmproj.
    let run = spinel(&[
        "run".as_ref(),
        "-m".as_ref(),
        text.as_os_str(),
        "--image".as_ref(),
        image.as_os_str(),
        "--prompt".as_ref(),
        "<|image|>Hi".as_ref(),
        "-n".as_ref(),
        "1".as_ref(),
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("images need a vision model"), "{err}");
    // With one.
    let run = run_with_images(&text, &mmproj, &[image], "<|image|>Hi");
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("text-only"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_takes_images_by_flag_and_command() {
    use std::io::Write as _;
    let (dir, gguf, mmproj) = convert_vision("mllama", "chat");
    let image = testdata().join("vision/images/landscape_300x200.png");
    let missing = dir.join("missing.png");
    let mut child = Command::new(SPINEL)
        .args(["chat", "-m"])
        .arg(&gguf)
        .arg("--mmproj")
        .arg(&mmproj)
        .args(["--temp", "0", "-n", "4", "--stats", "-t", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "/image {}\nWhat is in this image?\n/image {}\nAnd now?\n",
        image.display(),
        missing.display()
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Two answers; the image is encoded for the first, and the second
    // continues its cache; the missing file is named (and counts as a
    // failed turn).
    assert_eq!(err.matches("image encode:").count(), 1, "{err}");
    assert_eq!(err.matches(" cached)").count(), 1, "{err}");
    assert!(err.contains("missing.png"), "{err}");
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokenize_expands_image_markers_as_the_processor_does() {
    // The processor's input_ids for every reference image (the JPEG's too:
    // the expansion depends only on the image's size).
    let vision = testdata().join("vision");
    for model in ["mllama", "llama4_vision"] {
        let (dir, gguf, mmproj) = convert_vision(model, "tokenize");
        let reference = vision_reference(model);
        for name in IMAGE_NAMES {
            let p = &reference["prompts"][name];
            let image = vision.join("images").join(name);
            let out = spinel(&[
                "tokenize".as_ref(),
                "-m".as_ref(),
                gguf.as_os_str(),
                "--mmproj".as_ref(),
                mmproj.as_os_str(),
                "--image".as_ref(),
                image.as_os_str(),
                "--text".as_ref(),
                p["prompt_text"].as_str().unwrap().as_ref(),
                "--json".as_ref(),
                "--no-bos".as_ref(),
            ]);
            assert!(
                out.status.success(),
                "{model} {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(ids(&doc["ids"]), ids(&p["input_ids"]), "{model} {name}");
        }
        // An image without its processor, or one too many, is an error.
        let image = vision.join("images").join(IMAGE_NAMES[0]);
        let text = reference["prompts"][IMAGE_NAMES[0]]["prompt_text"]
            .as_str()
            .unwrap();
        let no_mmproj = spinel(&[
            "tokenize".as_ref(),
            "-m".as_ref(),
            gguf.as_os_str(),
            "--image".as_ref(),
            image.as_os_str(),
            "--text".as_ref(),
            text.as_ref(),
        ]);
        assert!(!no_mmproj.status.success());
        assert!(String::from_utf8_lossy(&no_mmproj.stderr).contains("--image needs --mmproj"));
        let two = spinel(&[
            "tokenize".as_ref(),
            "-m".as_ref(),
            gguf.as_os_str(),
            "--mmproj".as_ref(),
            mmproj.as_os_str(),
            "--image".as_ref(),
            image.as_os_str(),
            "--image".as_ref(),
            image.as_os_str(),
            "--text".as_ref(),
            text.as_ref(),
        ]);
        assert!(!two.status.success());
        let err = String::from_utf8_lossy(&two.stderr);
        assert!(
            err.contains("1 image tokens in the prompt for 2 images"),
            "{model}: {err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `spinel quantize IN OUT --type TY`.
fn quantize(input: &Path, out: &Path, ty: &str) -> Output {
    spinel(&[
        "quantize".as_ref(),
        input.as_os_str(),
        out.as_os_str(),
        "--type".as_ref(),
        ty.as_ref(),
    ])
}

/// The type of every tensor of a GGUF file, by name.
fn tensor_types(path: &Path) -> Vec<(String, GgmlType)> {
    // SAFETY: the test's own file, not changed while mapped.
    let m = unsafe { MappedGguf::open(path) }.unwrap_or_else(|e| panic!("{e}"));
    m.file()
        .tensors()
        .iter()
        .map(|t| (t.name().to_owned(), t.ggml_type()))
        .collect()
}

/// The metadata of a GGUF file, values as debug strings.
fn metadata(path: &Path) -> Vec<(String, String)> {
    // SAFETY: as in `tensor_types`.
    let m = unsafe { MappedGguf::open(path) }.unwrap_or_else(|e| panic!("{e}"));
    m.file()
        .metadata()
        .iter()
        .map(|(k, v)| (k.to_owned(), format!("{v:?}")))
        .collect()
}

/// The type an mmproj tensor must have once quantized to `ty`.
fn expected_mmproj_type(name: &str, dims_big: usize, row: u64, ty: &str) -> GgmlType {
    let embedding = name.contains("position_embd") || name.contains("class_embd");
    if dims_big != 2 || !name.ends_with(".weight") || embedding {
        GgmlType::F32
    } else if ty == "q8_0" && row % 32 == 0 {
        GgmlType::Q8_0
    } else {
        GgmlType::F16
    }
}

#[test]
fn quantized_mmproj_keeps_the_vision_tower_close() {
    // Largest difference of the image-prompt logits from the f32 mmproj's,
    // per model and type. Measured on the tiny models (logits spread over
    // ~17.5): q8_0 moves them by 5.1e-2 (llama4_vision) and 8.8e-2
    // (mllama), f16 by 1.6e-3 and 2.0e-3 (the tower runs the stored types,
    // activations quantized as ggml does). The bounds (q8_0 0.15, f16 6e-3)
    // are under 1% of the spread; against
    // transformers the f32 file's own 1e-3 is added.
    for (model, image) in [
        ("llama4_vision", "landscape_300x200.png"),
        ("mllama", "landscape_300x200.png"),
    ] {
        let (dir, gguf, mmproj) = convert_vision(model, "quantize");
        let (base, want) = vision_logits(model, &gguf, &mmproj, image);
        let spread = base.iter().fold(f32::MIN, |a, &b| a.max(b))
            - base.iter().fold(f32::MAX, |a, &b| a.min(b));
        let f32_types = tensor_types(&mmproj);
        // SAFETY: as in `tensor_types`.
        let dims: std::collections::HashMap<String, Vec<u64>> = {
            let m = unsafe { MappedGguf::open(&mmproj) }.unwrap();
            m.file()
                .tensors()
                .iter()
                .map(|t| (t.name().to_owned(), t.dims().to_vec()))
                .collect()
        };
        for ty in ["q8_0", "f16"] {
            let out = dir.join(format!("m.{ty}.mmproj.gguf"));
            ok(
                &format!("quantize {model} mmproj {ty}"),
                quantize(&mmproj, &out, ty),
            );
            let types = tensor_types(&out);
            assert_eq!(types.len(), f32_types.len());
            let mut changed = 0;
            for (name, got) in &types {
                let d = &dims[name];
                let big = d.iter().filter(|&&x| x > 1).count();
                let want_ty = expected_mmproj_type(name, big, d[0], ty);
                assert_eq!(*got, want_ty, "{model} {ty}: {name} {d:?}");
                changed += usize::from(*got != GgmlType::F32);
            }
            assert!(
                changed >= 8,
                "{model} {ty}: only {changed} tensors quantized"
            );
            if ty == "q8_0" {
                assert!(types.iter().any(|(_, t)| *t == GgmlType::Q8_0));
            }
            // The metadata is copied; only general.file_type says the new type.
            let (a, b) = (metadata(&mmproj), metadata(&out));
            let strip = |m: Vec<(String, String)>| {
                m.into_iter()
                    .filter(|(k, _)| k != "general.file_type")
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(a), strip(b), "{model} {ty}: metadata");
            let (got, _) = vision_logits(model, &gguf, &out, image);
            let d_base = max_abs_diff(&got, &base);
            let d_ref = max_abs_diff(&got, &want);
            eprintln!(
                "{model} mmproj {ty}: logits differ from the f32 mmproj's by {d_base:.2e} \
                 (spread {spread:.2}), from transformers' by {d_ref:.2e}"
            );
            assert!(
                d_base > 0.0,
                "{model} {ty}: the quantized tower changed nothing"
            );
            let bound = if ty == "q8_0" { 0.15 } else { 6e-3 };
            assert!(
                d_base <= bound,
                "{model} {ty}: {d_base} from the f32 mmproj"
            );
            assert!(
                d_ref <= bound + 1e-3,
                "{model} {ty}: {d_ref} from transformers"
            );
            assert!(
                d_base < spread * 1e-2,
                "{model} {ty}: {d_base} vs spread {spread}"
            );
        }
        // Other types are refused, naming the allowed ones.
        let out = dir.join("m.q4.mmproj.gguf");
        let run = quantize(&mmproj, &out, "q4_k_m");
        assert!(!run.status.success(), "{model}: q4_k_m mmproj accepted");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            err.contains("mmproj") && err.contains("f16") && err.contains("q8_0"),
            "{model}: {err}"
        );
        assert!(
            !err.contains("quantizing"),
            "{model}: refused after starting: {err}"
        );
        assert!(!out.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn quantized_mllama_text_model_runs_with_an_image() {
    // The text GGUF (cross-attention layers included) quantizes like any
    // other model and still runs an image prompt.
    let (dir, gguf, mmproj) = convert_vision("mllama", "quantize-text");
    let image = "landscape_300x200.png";
    let (base, _) = vision_logits("mllama", &gguf, &mmproj, image);
    let out = dir.join("m.q8_0.gguf");
    ok("quantize mllama text q8_0", quantize(&gguf, &out, "q8_0"));
    let types = tensor_types(&out);
    // The cross-attention projections (blk.N.cross_attn_{q,k,v,o}.weight)
    // are quantized like self-attention's (F16 where a row is not whole
    // Q8_0 blocks, as llama-quantize falls back).
    let cross: Vec<_> = types
        .iter()
        .filter(|(n, _)| n.contains(".cross_attn_") && !n.contains("norm"))
        .filter(|(n, _)| n.ends_with(".weight"))
        .collect();
    assert_eq!(cross.len() % 4, 0, "{cross:?}");
    assert!(!cross.is_empty(), "no cross-attention tensors: {types:?}");
    for (n, t) in &cross {
        assert_ne!(*t, GgmlType::F32, "{n} left f32");
    }
    let (got, _) = vision_logits("mllama", &out, &mmproj, image);
    let d = max_abs_diff(&got, &base);
    eprintln!("mllama text q8_0: image-prompt logits differ by {d:.2e}");
    assert!(d.is_finite() && d < 0.1, "q8_0 text model: {d}");
    let _ = std::fs::remove_dir_all(&dir);
}
