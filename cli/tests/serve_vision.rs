//! `spinel serve --mmproj`: images in OpenAI `image_url` parts, on the dev
//! vision models of `../shared/testdata/vision` (Llama 3.2 Vision = mllama,
//! and Llama 4), converted here by `spinel convert`.
//!
//! * An image sent as a base64 `data:` URL gives transformers' greedy
//!   tokens (the reference data), streamed and not, with the image's encode
//!   time in `timings`, on a batching server while a text request runs
//!   beside it.
//! * An http(s) image URL is refused unless `--allow-image-urls`, and then
//!   fetched (from a loopback server in the test).
//! * Corrupt images, bad data: URLs and images sent to a server without a
//!   vision model get 400 naming the part.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use base64::Engine as _;
use common::{Reply, Server, post, scratch_dir, start, test_model};
use serde_json::{Value, json};

fn vision_data() -> PathBuf {
    let root = match std::env::var_os("SPINEL_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    };
    root.join("vision")
}

/// `spinel convert` of the dev model `name`: (model, mmproj).
fn convert(name: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let out = dir.join(format!("{name}.gguf"));
    let src = vision_data().join("dev").join(name);
    let run = Command::new(env!("CARGO_BIN_EXE_spinel"))
        .arg("convert")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .args(["--outtype", "f32"])
        .output()
        .expect("run spinel convert");
    common::ok("spinel convert", run);
    (out, dir.join(format!("{name}.mmproj.gguf")))
}

fn reference(name: &str) -> Value {
    let path = vision_data().join("dev").join(name).join("reference.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn data_url(image: &str) -> String {
    let bytes = std::fs::read(vision_data().join("images").join(image)).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!("data:image/png;base64,{b64}")
}

/// A greedy request of 8 tokens, past end-of-generation, returning the ids.
fn request(messages: Value, stream: bool) -> Value {
    json!({
        "messages": messages,
        "temperature": 0,
        "max_tokens": 8,
        "ignore_eos": true,
        "return_tokens": true,
        "stream": stream,
    })
}

/// One user message: `image_url` (a data: or http URL) before `text`.
fn image_message(url: &str, text: &str) -> Value {
    json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": text},
    ]}])
}

/// The reference prompt `image` of `model` as an API request's messages.
fn reference_messages(reference: &Value, image: &str) -> (Value, Vec<u64>) {
    let p = &reference["prompts"][image];
    let text = p["messages"][0]["content"][1]["text"].as_str().unwrap();
    let greedy = p["greedy"]["generate"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    (image_message(&data_url(image), text), greedy)
}

fn tokens(v: &Value) -> Vec<u64> {
    v["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens in {v}"))
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

fn assert_400(r: &Reply, needle: &str, param: &str) {
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    assert_eq!(e["param"], param, "{}", r.body);
}

/// Serves `body` once per connection on a loopback port, `n` times.
fn serve_file(body: Vec<u8>, n: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(n) {
            let mut conn = conn.unwrap();
            let mut head = [0u8; 4096];
            let _ = conn.read(&mut head);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
    });
    format!("http://{addr}/image.png")
}

/// `spinel serve -c 512` of a converted model with its mmproj.
fn start_vision(model: &Path, mmproj: &Path, extra: &[&str]) -> Server {
    let (model, mmproj) = (model.to_str().unwrap(), mmproj.to_str().unwrap());
    let mut args = vec!["-m", model, "--mmproj", mmproj, "-c", "512"];
    args.extend_from_slice(extra);
    start(&args)
}

fn check_family(name: &str, dir: &Path) {
    let (model, mmproj) = convert(name, dir);
    let reference = reference(name);
    let server = start_vision(&model, &mmproj, &["--parallel", "2", "-t", "2"]);
    for image in ["landscape_300x200.png", "portrait_160x400.png"] {
        let (messages, greedy) = reference_messages(&reference, image);
        let r = post(&server, "/v1/chat/completions", &request(messages, false));
        assert_eq!(r.status, 200, "{name} {image}: {}", r.body);
        let v = r.json();
        assert_eq!(tokens(&v), greedy, "{name} {image}");
        let ms = v["timings"]["image_encode_ms"].as_f64().unwrap();
        assert!(ms > 0.0, "{name} {image}: image_encode_ms {ms}");
    }
    concurrent_with_text(name, &server, &reference);
    streamed(name, &server, &reference);
    bad_images(&server);
}

/// An image request and a text request at the same time on a batching
/// server: the image answer is still the reference's.
fn concurrent_with_text(name: &str, server: &Server, reference: &Value) {
    let text = json!([{"role": "user", "content": "Write a haiku about the sea."}]);
    let body = request(text, false);
    let (messages, greedy) = reference_messages(reference, "landscape_300x200.png");
    let image_body = request(messages, false);
    std::thread::scope(|s| {
        let t = s.spawn(|| post(server, "/v1/chat/completions", &body));
        let i = s.spawn(|| post(server, "/v1/chat/completions", &image_body));
        let (t, i) = (t.join().unwrap(), i.join().unwrap());
        assert_eq!(t.status, 200, "{name} text beside an image: {}", t.body);
        assert_eq!(tokens(&t.json()).len(), 8);
        assert_eq!(i.status, 200, "{name} image beside text: {}", i.body);
        assert_eq!(
            tokens(&i.json()),
            greedy,
            "{name}: image answer beside text"
        );
    });
}

fn streamed(name: &str, server: &Server, reference: &Value) {
    let (messages, greedy) = reference_messages(reference, "portrait_160x400.png");
    let r = post(server, "/v1/chat/completions", &request(messages, true));
    assert_eq!(r.status, 200, "{name}: {}", r.body);
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(tokens(&last), greedy, "{name} streamed");
    assert!(last["timings"]["image_encode_ms"].as_f64().unwrap() > 0.0);
}

fn bad_images(server: &Server) {
    let png = std::fs::read(vision_data().join("images/landscape_300x200.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let truncated = format!(
        "data:image/png;base64,{}",
        b64.encode(&png[..png.len() / 2])
    );
    let not_image = format!("data:image/png;base64,{}", b64.encode(b"GIF89a not a png"));
    for (url, needle) in [
        (truncated.as_str(), "messages[0].content[0]"),
        (not_image.as_str(), "messages[0].content[0]"),
        ("data:image/png;base64,@@", "does not decode"),
        ("http://127.0.0.1:9/x.png", "does not fetch image URLs"),
    ] {
        let r = post(
            server,
            "/v1/chat/completions",
            &request(image_message(url, "What is it?"), false),
        );
        assert_400(&r, needle, "messages[0].content[0]");
    }
    // Two images in one message.
    let two = json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url("landscape_300x200.png")}},
        {"type": "image_url", "image_url": {"url": data_url("portrait_160x400.png")}},
        {"type": "text", "text": "Compare."},
    ]}]);
    let r = post(server, "/v1/chat/completions", &request(two, false));
    assert_eq!(r.status, 200, "two images: {}", r.body);
    assert_eq!(tokens(&r.json()).len(), 8);
    // The server goes on.
    let ok = post(
        server,
        "/v1/chat/completions",
        &request(json!([{"role": "user", "content": "Hi"}]), false),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[test]
fn mllama_images_through_the_api() {
    let dir = scratch_dir("serve-vision-mllama");
    check_family("mllama", &dir);
}

#[test]
fn llama4_images_through_the_api() {
    let dir = scratch_dir("serve-vision-llama4");
    check_family("llama4_vision", &dir);
}

#[test]
fn image_urls_are_fetched_only_when_allowed() {
    let dir = scratch_dir("serve-vision-urls");
    let (model, mmproj) = convert("llama4_vision", &dir);
    let reference = reference("llama4_vision");
    let server = start_vision(&model, &mmproj, &["--allow-image-urls"]);
    let png = std::fs::read(vision_data().join("images/landscape_300x200.png")).unwrap();
    let url = serve_file(png, 1);
    let (messages, greedy) = reference_messages(&reference, "landscape_300x200.png");
    let text = messages[0]["content"][1]["text"].as_str().unwrap();
    let r = post(
        &server,
        "/v1/chat/completions",
        &request(image_message(&url, text), false),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(tokens(&r.json()), greedy, "fetched image");
    // Nothing listens there: a 400 naming the part, not a hang or a 500.
    let r = post(
        &server,
        "/v1/chat/completions",
        &request(image_message("http://127.0.0.1:9/x.png", text), false),
    );
    assert_400(&r, "cannot fetch", "messages[0].content[0]");
}

#[test]
fn a_server_without_vision_refuses_images() {
    let (model, _) = test_model();
    let server = start(&["-m", model.to_str().unwrap(), "-c", "256"]);
    let r = post(
        &server,
        "/v1/chat/completions",
        &request(image_message(&data_url("small_64x48.jpg"), "What?"), false),
    );
    assert_400(&r, "takes no images", "messages[0].content[0]");
}
