//! `strftime_now(format)`, the global transformers gives chat templates
//! (Llama 3.1+ stamp "Today Date: 26 Jul 2024" into the system header).
//!
//! Python formats the local time; we format UTC (the C locale's names), with
//! the conversions templates use. An unknown `%x` is copied through, as
//! glibc's strftime does.

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    /// 1 ..= 12
    month: u32,
    /// 1 ..= 31
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday
    weekday: u32,
    /// 1 ..= 366
    yday: u32,
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Seconds since the Unix epoch to a UTC civil time (Howard Hinnant's
/// days-to-civil algorithm, valid for the whole i64 day range we accept).
fn civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[month as usize - 1] + day + u32::from(month > 2 && is_leap(year));
    Civil {
        year,
        month,
        day,
        hour: (sod / 3600) as u32,
        minute: (sod / 60 % 60) as u32,
        second: (sod % 60) as u32,
        // 1970-01-01 was a Thursday.
        weekday: (days + 4).rem_euclid(7) as u32,
        yday,
    }
}

/// Seconds since the epoch for `t` (negative before 1970).
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX / 2),
    }
}

/// Formats `secs` (Unix time, UTC) like C's `strftime` in the C locale.
pub(crate) fn strftime(format: &str, secs: i64) -> String {
    // Keep the year arithmetic far from overflow.
    let secs = secs.clamp(-(1 << 50), 1 << 50);
    let t = civil(secs);
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            break;
        };
        let hour12 = match t.hour % 12 {
            0 => 12,
            h => h,
        };
        match spec {
            'Y' => out.push_str(&t.year.to_string()),
            'y' => out.push_str(&format!("{:02}", t.year.rem_euclid(100))),
            'C' => out.push_str(&format!("{:02}", t.year.div_euclid(100))),
            'm' => out.push_str(&format!("{:02}", t.month)),
            'd' => out.push_str(&format!("{:02}", t.day)),
            'e' => out.push_str(&format!("{:2}", t.day)),
            'j' => out.push_str(&format!("{:03}", t.yday)),
            'H' => out.push_str(&format!("{:02}", t.hour)),
            'I' => out.push_str(&format!("{hour12:02}")),
            'M' => out.push_str(&format!("{:02}", t.minute)),
            'S' => out.push_str(&format!("{:02}", t.second)),
            'p' => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            'A' => out.push_str(DAYS[t.weekday as usize]),
            'a' => out.push_str(&DAYS[t.weekday as usize][..3]),
            'B' => out.push_str(MONTHS[t.month as usize - 1]),
            'b' | 'h' => out.push_str(&MONTHS[t.month as usize - 1][..3]),
            'w' => out.push_str(&t.weekday.to_string()),
            'u' => out.push_str(&(if t.weekday == 0 { 7 } else { t.weekday }).to_string()),
            'F' => out.push_str(&format!("{}-{:02}-{:02}", t.year, t.month, t.day)),
            'D' => out.push_str(&format!(
                "{:02}/{:02}/{:02}",
                t.month,
                t.day,
                t.year.rem_euclid(100)
            )),
            'T' => out.push_str(&format!("{:02}:{:02}:{:02}", t.hour, t.minute, t.second)),
            'R' => out.push_str(&format!("{:02}:{:02}", t.hour, t.minute)),
            's' => out.push_str(&secs.to_string()),
            'Z' => out.push_str("UTC"),
            'z' => out.push_str("+0000"),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            '%' => out.push('%'),
            other => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let c = civil(0);
        assert_eq!(
            (c.year, c.month, c.day, c.weekday, c.yday),
            (1970, 1, 1, 4, 1)
        );
        // 2024-02-29 12:34:56 UTC, a Thursday, day 60.
        let c = civil(1_709_210_096);
        assert_eq!(
            (
                c.year, c.month, c.day, c.hour, c.minute, c.second, c.weekday, c.yday
            ),
            (2024, 2, 29, 12, 34, 56, 4, 60)
        );
        // 1969-12-31 23:59:59, a Wednesday.
        let c = civil(-1);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.weekday, c.yday),
            (1969, 12, 31, 23, 3, 365)
        );
        // 2000-12-31: day 366 of a leap century year.
        assert_eq!(civil(978_220_800).yday, 366);
    }

    #[test]
    fn formats_like_c_strftime() {
        // Expected values from Python's time.strftime(fmt, time.gmtime(t)).
        let t = 1_721_952_000 + 9 * 3600 + 5 * 60 + 7; // 2024-07-26 09:05:07
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(strftime("%d %B %Y", t), "26 July 2024");
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-07-26 09:05:07");
        assert_eq!(
            strftime("%A %a %j %I%p %y %e|%%|%Q", t),
            "Friday Fri 208 09AM 24 26|%|%Q"
        );
        assert_eq!(
            strftime("%F %T %D %u %w", t),
            "2024-07-26 09:05:07 07/26/24 5 5"
        );
        assert_eq!(strftime("%I %p", t + 4 * 3600), "01 PM");
        assert_eq!(strftime("%I %p", t - 9 * 3600), "12 AM");
        assert_eq!(strftime("trailing %", t), "trailing %");
    }
}
