//! UTC timestamps as Customer.io and our reports write them
//! (`2026-12-01T08:30:00.000Z`), to and from milliseconds since the epoch.

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn iso8601(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// Milliseconds since the epoch of `2026-12-01`, `2026-12-01T08:30:00Z`
/// (fractions and a `+HH:MM` offset allowed), or a bare number of ms.
pub fn parse(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let num = |t: &str| t.parse::<i64>().ok();
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "00:00:00Z"));
    let mut dp = date.splitn(3, '-');
    let (y, mo, d) = (num(dp.next()?)?, num(dp.next()?)?, num(dp.next()?)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let (clock, offset_min) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, m) = off[1..].split_once(':').unwrap_or((&off[1..], "0"));
        (c, sign * (num(h)? * 60 + num(m)?))
    } else {
        (time, 0)
    };
    let mut cp = clock.splitn(3, ':');
    let (h, mi) = (num(cp.next()?)?, num(cp.next().unwrap_or("0"))?);
    let sec = cp.next().unwrap_or("0");
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let frac_ms = format!("{frac:0<3}").get(..3).and_then(num).unwrap_or(0);
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + num(whole)?;
    Some((secs - offset_min * 60) * 1000 + frac_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_points() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse("2026-11-17T06:02:05.000Z"), Some(1_794_895_325_000));
        for ms in [0, 951_782_400_123, 1_794_895_325_000, 4_102_444_799_999] {
            assert_eq!(parse(&iso8601(ms)), Some(ms), "{ms}");
        }
        assert_eq!(parse("2026-12-01"), parse("2026-12-01T00:00:00Z"));
        assert_eq!(
            parse("2026-12-01T02:00:00+02:00"),
            parse("2026-12-01T00:00:00Z")
        );
        assert_eq!(parse("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse("yesterday"), None);
        assert_eq!(parse("2026-13-01"), None);
    }
}
