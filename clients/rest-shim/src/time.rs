//! Clock reads and the time formats the gateways use: unix seconds, unix
//! milliseconds and ISO-8601 UTC strings (`2024-01-15T10:30:00.000Z`).

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds of a protobuf timestamp (0 when absent).
pub(crate) fn ms_of(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// A protobuf timestamp of unix milliseconds.
pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Unix seconds of a protobuf timestamp (0 when absent).
pub(crate) fn secs_of(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map_or(0, |t| t.seconds)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for unix milliseconds.
pub(crate) fn iso(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z")
}

/// ISO string of a protobuf timestamp, `None` when absent.
pub(crate) fn iso_of(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ts.map(|t| iso(ms_of(Some(t))))
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_strings() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_705_314_600_000), "2024-01-15T10:30:00.000Z");
        assert_eq!(iso(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso(1_760_356_800_000), "2025-10-13T12:00:00.000Z");
    }
}
