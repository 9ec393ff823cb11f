//! Small helpers for the benchmark: median/min/max of a series (of durations or plain
//! numbers), byte sizes with binary suffixes (`64MiB`, `1GiB`), and durations printed at
//! a readable scale.

use std::time::Duration;

/// Median, minimum and maximum of one figure over all runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: Duration,
    pub min: Duration,
    pub max: Duration,
}

impl Spread {
    /// `None` for an empty series. The median of an even count is the mean of the two
    /// middle values.
    pub fn of(values: &[Duration]) -> Option<Spread> {
        let mut v = values.to_vec();
        v.sort_unstable();
        let n = v.len();
        if n == 0 {
            return None;
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// `median (min – max)`, or just the value when all runs agree or there was one run.
    pub fn cell(&self) -> String {
        if self.min == self.max {
            human(self.median)
        } else {
            format!(
                "{} ({} – {})",
                human(self.median),
                human(self.min),
                human(self.max)
            )
        }
    }
}

/// A duration at a readable scale: `850 µs`, `12.3 ms`, `3.21 s`.
pub fn human(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// Parses `1GiB`, `64MiB`, `512KiB`, `1G`, `100M` or plain bytes (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let num: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (try 64MiB or 1GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(format!("unknown size unit in `{s}` (use KiB, MiB or GiB)")),
    };
    num.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A byte count with a binary suffix: `64 MiB`, `1.0 GiB`.
pub fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{} KiB", b >> 10)
    }
}

/// Median (min – max) of plain numbers, printed with `fmt`.
pub fn number_cell(values: &[f64], fmt: fn(f64) -> String) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return "–".into();
    }
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    if v[0] == v[n - 1] {
        fmt(median)
    } else {
        format!("{} ({} – {})", fmt(median), fmt(v[0]), fmt(v[n - 1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_odd_and_even() {
        let ms = |v: u64| Duration::from_millis(v);
        let s = Spread::of(&[ms(3), ms(1), ms(2)]).unwrap();
        assert_eq!((s.median, s.min, s.max), (ms(2), ms(1), ms(3)));
        assert_eq!(Spread::of(&[ms(1), ms(3)]).unwrap().median, ms(2));
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("GiB").is_err());
    }

    #[test]
    fn number_cells_give_median_and_range() {
        let f = |v: f64| format!("{v:.0}");
        assert_eq!(number_cell(&[3.0, 1.0, 2.0], f), "2 (1 – 3)");
        assert_eq!(number_cell(&[5.0], f), "5");
        assert_eq!(number_cell(&[], f), "–");
    }
}
