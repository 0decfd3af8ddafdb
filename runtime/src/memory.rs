//! Memory budgets and what the process uses: parsing `--memory-budget`
//! sizes, the default budget (a safe fraction of the memory this process
//! may still take), and the process's resident memory, page faults and disk
//! reads (Linux `/proc`).
//!
//! A model larger than its budget is streamed from its memory map (see
//! [`crate::model::LoadOptions`] and [`crate::model::ResidencyReport`]).

use std::path::Path;

/// The share of available memory the default budget takes.
pub const DEFAULT_BUDGET_FRACTION: f64 = 0.75;

/// Parses a size: plain bytes (`1048576`) or a number with a unit, binary
/// (`KiB`, `MiB`, `GiB`, `TiB`, also `K`, `M`, `G`, `T`) or decimal (`KB`,
/// `MB`, `GB`, `TB`); case-insensitive, fractions allowed (`1.5GiB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let bad = || format!("{s:?} is not a size (examples: 6GiB, 512MiB, 1.5G, 1048576)");
    if num.is_empty() {
        return Err(bad());
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| format!("{s:?} is too large"));
    }
    let x: f64 = num.parse().map_err(|_| bad())?;
    let bytes = x * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(bytes as u64)
}

/// `1.50 GiB`-style text for a byte count.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The memory this process may still take: the smaller of the system's
/// `MemAvailable` and, when the process is in a memory-limited cgroup (v2
/// `memory.max`, or v1 `memory.limit_in_bytes`), the limit minus what the
/// cgroup uses (less its inactive page cache, which is reclaimed first).
/// `None` where this cannot be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let avail = meminfo_kib(&meminfo, "MemAvailable:")? * 1024;
    Some(match cgroup_headroom() {
        Some(h) => avail.min(h),
        None => avail,
    })
}

/// The default memory budget: [`DEFAULT_BUDGET_FRACTION`] of
/// [`available_memory`]; `None` where that cannot be read.
pub fn default_budget() -> Option<u64> {
    available_memory().map(|a| (a as f64 * DEFAULT_BUDGET_FRACTION) as u64)
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// `limit - usage` of this process's memory cgroup, if it has a limit.
fn cgroup_headroom() -> Option<u64> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read =
        |p: &Path| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok() };
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        let (dir, limit, usage) = if controllers.is_empty() {
            (
                Path::new("/sys/fs/cgroup").join(rel),
                "memory.max",
                "memory.current",
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                Path::new("/sys/fs/cgroup/memory").join(rel),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        // "max" (v2) does not parse: no limit. v1 writes a huge number.
        let Some(limit) = read(&dir.join(limit)) else {
            continue;
        };
        if limit >= 1 << 60 {
            continue;
        }
        // Inactive file pages are reclaimed before anything else: count
        // them as free (the "working set" container tools report).
        let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let inactive = stat
            .lines()
            .find_map(|l| {
                l.strip_prefix("total_inactive_file ")
                    .or_else(|| l.strip_prefix("inactive_file "))
            })
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let usage = read(&dir.join(usage)).unwrap_or(0).saturating_sub(inactive);
        return Some(limit.saturating_sub(usage));
    }
    None
}

/// What the process uses now, from Linux's `/proc/self/{status,stat,io}`.
/// Every field is `None` where it could not be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set (`VmRSS`), bytes.
    pub rss: Option<u64>,
    /// Resident pages of mapped files (`RssFile`): the model's mapped pages.
    pub rss_file: Option<u64>,
    /// Anonymous resident memory (`RssAnon`): buffers, KV cache.
    pub rss_anon: Option<u64>,
    /// Peak resident set (`VmHWM`).
    pub peak_rss: Option<u64>,
    /// Major page faults (pages that had to be read from disk) so far.
    pub major_faults: Option<u64>,
    /// Bytes this process caused to be read from storage so far
    /// (`read_bytes` of `/proc/self/io`; page-cache hits are not counted).
    pub read_bytes: Option<u64>,
}

impl ProcessMemory {
    /// Reads the current values.
    pub fn now() -> ProcessMemory {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |k: &str| meminfo_kib(&status, k).map(|v| v * 1024);
        let major_faults = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the parenthesised command name; majflt is
                // field 12 overall, the 10th after the name.
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace().nth(9)?.parse().ok()
            });
        let read_bytes = std::fs::read_to_string("/proc/self/io")
            .ok()
            .and_then(|s| meminfo_kib(&s, "read_bytes:"));
        ProcessMemory {
            rss: kib("VmRSS:"),
            rss_file: kib("RssFile:"),
            rss_anon: kib("RssAnon:"),
            peak_rss: kib("VmHWM:"),
            major_faults,
            read_bytes,
        }
    }

    /// Major faults and bytes read since `earlier` (counters only).
    pub fn since(&self, earlier: &ProcessMemory) -> (Option<u64>, Option<u64>) {
        let d = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        (
            d(self.major_faults, earlier.major_faults),
            d(self.read_bytes, earlier.read_bytes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("6GiB").unwrap(), 6 << 30);
        assert_eq!(parse_size("6 gib").unwrap(), 6 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        for bad in ["", "GiB", "6 apples", "-1G", "1.2.3G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sizes_format() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_memory_is_read_on_linux() {
        let m = ProcessMemory::now();
        assert!(m.rss.unwrap() > 0);
        assert!(m.peak_rss.unwrap() >= m.rss.unwrap());
        assert!(m.major_faults.is_some());
        assert!(available_memory().unwrap() > 0);
        let b = default_budget().unwrap();
        assert!(b > 0 && b < available_memory().unwrap());
    }
}
