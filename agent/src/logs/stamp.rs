//! The timestamp the writer puts in front of every line of a log file (`2024-05-01T12:00:00.123Z `), so
//! the file is readable on its own and the shipper sends each event with the time it was written, not
//! the time it was shipped (which may be hours later after an outage). Pure.

/// Length of the prefix including its trailing space.
pub const PREFIX_LEN: usize = 25;

/// Milliseconds since the Unix epoch, now.
pub use crate::clock::now_unix_ms as now_ms;

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01 (`days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ ` for a time in years 0..=9999 (clamped to that range).
pub fn format(ms: i64) -> [u8; PREFIX_LEN] {
    let ms = ms.clamp(-62_167_219_200_000, 253_402_300_799_999);
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    let mut out = *b"0000-00-00T00:00:00.000Z ";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, mo.into());
    put(8, 2, d.into());
    put(11, 2, h);
    put(14, 2, mi);
    put(17, 2, s);
    put(20, 3, milli);
    out
}

/// Splits a line into its prefix's time and the message after it; `None` when the line has no prefix.
pub fn parse(line: &[u8]) -> Option<(i64, &[u8])> {
    let p = line.get(..PREFIX_LEN)?;
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        p[r].iter().try_fold(0i64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let shape = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
        (24, b' '),
    ];
    if shape.iter().any(|(i, c)| p[*i] != *c) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, milli) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    let ms = days * 86_400_000 + h * 3_600_000 + mi * 60_000 + s * 1000 + milli;
    Some((ms, &line[PREFIX_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back_known_instants() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z "),
            (951_782_400_123, "2000-02-29T00:00:00.123Z "),
            (1_714_564_800_999, "2024-05-01T12:00:00.999Z "),
            (4_102_444_799_001, "2099-12-31T23:59:59.001Z "),
        ] {
            assert_eq!(std::str::from_utf8(&format(ms)).unwrap(), text);
            let mut line = text.as_bytes().to_vec();
            line.extend_from_slice(b"msg");
            assert_eq!(parse(&line), Some((ms, &b"msg"[..])));
        }
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        for day in (-200_000..200_000).step_by(7) {
            let ms = day * 86_400_000 + 12_345;
            assert_eq!(parse(&format(ms)).map(|(t, _)| t), Some(ms));
        }
    }

    #[test]
    fn lines_without_a_prefix_are_recognised() {
        for line in [
            &b""[..],
            b"INFO [05-01|12:00:00.000] Imported new chain segment",
            b"2024-05-01 12:00:00.000 [API] [CON] Connected",
            b"2024-05-01T12:00:00.000Zx",
            b"2024-13-01T12:00:00.000Z msg",
        ] {
            assert_eq!(parse(line), None, "{}", String::from_utf8_lossy(line));
        }
    }
}
