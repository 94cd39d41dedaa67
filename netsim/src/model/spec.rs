//! The compact text form of a [`LinkConfig`]: `FromStr` and a `Display` that
//! parses back to the same value. The grammar is documented on
//! [`LinkConfig`]'s `FromStr` impl and in the crate docs.

use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::str::FromStr;
use std::time::Duration;

use super::config::{
    preset, GilbertElliott, JitterDist, LinkConfig, QueueLimit, RateLimit, DEFAULT_QUEUE,
    DEFAULT_REORDER_HOLD,
};

const PROB: &str = "a probability such as 1%, 0.5% or 0.01 (between 0% and 100%)";
const DUR: &str = "a duration such as 30ms, 1.5ms, 500us or 2s";
const JITTER: &str = "a duration with an optional shape, such as 5ms, 5ms:uniform or 5ms:normal";
const REORDER: &str = "a probability with an optional hold time, such as 1% or 1%:20ms";
const RATE: &str = "a rate above 0 with a unit bit, kbit, mbit or gbit, such as 2mbit or 500kbit";
const QUEUE: &str = "a bound above 0 in time (200ms) or bytes (b, kb, kib, mb, mib: 64kb)";
const GE: &str = "p:PROB/r:PROB[/k:PROB][/h:PROB], such as p:5%/r:50%/k:0%/h:100% \
                  (k defaults to 0%, h to 100%)";
const GE_R: &str = "a probability above 0: with r=0 the link never leaves the bad state";

/// Why a link spec was rejected. Every variant names the offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// Two commas in a row, or a trailing comma.
    #[error("empty item in link spec (two commas in a row, or a trailing comma?)")]
    EmptyItem,
    /// A `key=value` item with a key this parser does not know.
    #[error(
        "unknown key `{key}` in link spec; known keys: loss, ge, delay, jitter, reorder, dup, \
         rate, queue"
    )]
    UnknownKey {
        /// The key as written.
        key: String,
    },
    /// A bare word that is neither a preset nor a key.
    #[error(
        "unknown item `{name}` in link spec: expected key=value or one of the presets perfect, \
         burst, wifi, cellular"
    )]
    UnknownPreset {
        /// The word as written.
        name: String,
    },
    /// A preset after a `key=value` item.
    #[error("preset `{name}` must be the first item of a link spec (later items override it)")]
    PresetNotFirst {
        /// The preset name.
        name: String,
    },
    /// The same key twice.
    #[error("`{key}` is given twice in link spec")]
    DuplicateKey {
        /// The repeated key.
        key: &'static str,
    },
    /// A key with no `=value`, or with an empty one.
    #[error("`{key}` has no value; expected {expected}")]
    MissingValue {
        /// The key.
        key: &'static str,
        /// What a value for it looks like.
        expected: &'static str,
    },
    /// A value that does not parse or is out of range.
    #[error("invalid value `{value}` for `{key}`: expected {expected}")]
    InvalidValue {
        /// The key, or `ge.p`-style for a Gilbert–Elliott parameter.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What a value for it looks like.
        expected: &'static str,
    },
    /// `queue` without `rate` (from the spec or its preset).
    #[error("`queue` needs a `rate`: a queue only forms in front of a bandwidth cap")]
    QueueWithoutRate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Loss,
    Ge,
    Delay,
    Jitter,
    Reorder,
    Dup,
    Rate,
    Queue,
}

impl Key {
    const ALL: [Key; 8] = [
        Key::Loss,
        Key::Ge,
        Key::Delay,
        Key::Jitter,
        Key::Reorder,
        Key::Dup,
        Key::Rate,
        Key::Queue,
    ];

    fn name(self) -> &'static str {
        match self {
            Key::Loss => "loss",
            Key::Ge => "ge",
            Key::Delay => "delay",
            Key::Jitter => "jitter",
            Key::Reorder => "reorder",
            Key::Dup => "dup",
            Key::Rate => "rate",
            Key::Queue => "queue",
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Key::Loss | Key::Dup => PROB,
            Key::Ge => GE,
            Key::Delay => DUR,
            Key::Jitter => JITTER,
            Key::Reorder => REORDER,
            Key::Rate => RATE,
            Key::Queue => QUEUE,
        }
    }

    fn from_name(name: &str) -> Option<Key> {
        Key::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }
}

/// Parses the compact link spec.
///
/// ```text
/// spec    := "" | item ("," item)*            whitespace around items is ignored
/// item    := PRESET | key "=" value           a preset only as the first item
/// loss    = PROB                              independent loss
/// ge      = p:PROB/r:PROB[/k:PROB][/h:PROB]   Gilbert–Elliott: p good→bad, r bad→good,
///                                             k loss while good (0%), h loss while bad (100%)
/// delay   = DUR                               one-way base delay
/// jitter  = DUR[:uniform|:normal]             bound of the jitter, ±DUR (uniform)
/// reorder = PROB[:DUR]                        hold-back probability [and time, 10ms]
/// dup     = PROB                              duplication
/// rate    = RATE                              cap: N bit|kbit|mbit|gbit (SI, 1000)
/// queue   = DUR | BYTES                       bound of the queue at the cap (100ms);
///                                             BYTES is N b|kb|kib|mb|mib
/// PROB    := N% | fraction                    20% or 0.2
/// DUR     := N (ns|us|ms|s) | 0               decimals allowed: 1.5ms
/// PRESET  := perfect | burst | wifi | cellular
/// ```
///
/// Example: `loss=20%,delay=30ms,jitter=5ms,reorder=1%,dup=0.5%,rate=2mbit,queue=200ms`,
/// or `burst,delay=20ms` (a preset, then overrides). Keys and units are
/// case-insensitive; a key may appear once.
impl FromStr for LinkConfig {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let mut cfg = LinkConfig::default();
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(cfg);
        }
        let mut seen = [false; Key::ALL.len()];
        let mut queue = None;
        for (index, item) in spec.split(',').map(str::trim).enumerate() {
            if item.is_empty() {
                return Err(SpecError::EmptyItem);
            }
            let (name, value) = match item.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (item, None),
            };
            let Some(key) = Key::from_name(name) else {
                if value.is_some() {
                    return Err(SpecError::UnknownKey { key: name.into() });
                }
                let lower = name.to_ascii_lowercase();
                let Some(preset) = preset(&lower) else {
                    return Err(SpecError::UnknownPreset { name: name.into() });
                };
                if index != 0 {
                    return Err(SpecError::PresetNotFirst { name: name.into() });
                }
                cfg = preset;
                continue;
            };
            let value = match value {
                Some(v) if !v.is_empty() => v,
                _ => {
                    return Err(SpecError::MissingValue {
                        key: key.name(),
                        expected: key.expected(),
                    })
                }
            };
            let slot = &mut seen[key as usize];
            if *slot {
                return Err(SpecError::DuplicateKey { key: key.name() });
            }
            *slot = true;
            let bad = || SpecError::InvalidValue {
                key: key.name(),
                value: value.into(),
                expected: key.expected(),
            };
            match key {
                Key::Loss => cfg.loss = parse_prob(value).ok_or_else(bad)?,
                Key::Dup => cfg.dup = parse_prob(value).ok_or_else(bad)?,
                Key::Ge => cfg.burst = Some(parse_ge(value)?),
                Key::Delay => cfg.delay = parse_duration(value).ok_or_else(bad)?,
                Key::Jitter => {
                    let (dur, shape) = split_suffix(value);
                    cfg.jitter = parse_duration(dur).ok_or_else(bad)?;
                    cfg.jitter_dist = match shape.map(str::to_ascii_lowercase).as_deref() {
                        None | Some("uniform") => JitterDist::Uniform,
                        Some("normal") => JitterDist::Normal,
                        Some(_) => return Err(bad()),
                    };
                }
                Key::Reorder => {
                    let (prob, hold) = split_suffix(value);
                    cfg.reorder = parse_prob(prob).ok_or_else(bad)?;
                    cfg.reorder_hold = match hold {
                        None => DEFAULT_REORDER_HOLD,
                        Some(hold) => parse_duration(hold).ok_or_else(bad)?,
                    };
                }
                Key::Rate => {
                    let bits_per_sec = parse_rate(value).ok_or_else(bad)?;
                    let queue = cfg.rate.map_or(DEFAULT_QUEUE, |r| r.queue);
                    cfg.rate = Some(RateLimit {
                        bits_per_sec,
                        queue,
                    });
                }
                Key::Queue => queue = Some(parse_queue(value).ok_or_else(bad)?),
            }
        }
        if let Some(queue) = queue {
            let rate = cfg.rate.as_mut().ok_or(SpecError::QueueWithoutRate)?;
            rate.queue = queue;
        }
        Ok(cfg)
    }
}

/// Prints the spec with every effective setting spelled out (presets
/// expanded), in the order of the grammar; `perfect` for the default.
/// Parsing the output gives back an equal `LinkConfig` for any configuration
/// whose probabilities lie in `0..=1`.
impl fmt::Display for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_perfect() {
            return f.write_str("perfect");
        }
        // Writes the separator before every item but the first.
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { "," };
            first = false;
            f.write_str(s)
        };
        if self.loss != 0.0 {
            sep(f)?;
            write!(f, "loss={}", Prob(self.loss))?;
        }
        if let Some(ge) = &self.burst {
            sep(f)?;
            write!(
                f,
                "ge=p:{}/r:{}/k:{}/h:{}",
                Prob(ge.p_good_to_bad),
                Prob(ge.p_bad_to_good),
                Prob(ge.loss_good),
                Prob(ge.loss_bad)
            )?;
        }
        if !self.delay.is_zero() {
            sep(f)?;
            write!(f, "delay={}", Dur(self.delay))?;
        }
        if !self.jitter.is_zero() || self.jitter_dist != JitterDist::Uniform {
            sep(f)?;
            write!(f, "jitter={}", Dur(self.jitter))?;
            if self.jitter_dist == JitterDist::Normal {
                f.write_str(":normal")?;
            }
        }
        if self.reorder != 0.0 || self.reorder_hold != DEFAULT_REORDER_HOLD {
            sep(f)?;
            write!(
                f,
                "reorder={}:{}",
                Prob(self.reorder),
                Dur(self.reorder_hold)
            )?;
        }
        if self.dup != 0.0 {
            sep(f)?;
            write!(f, "dup={}", Prob(self.dup))?;
        }
        if let Some(rate) = &self.rate {
            sep(f)?;
            write!(f, "rate={},queue=", Rate(rate.bits_per_sec.get()))?;
            match rate.queue {
                QueueLimit::Time(d) => write!(f, "{}", Dur(d))?,
                QueueLimit::Bytes(b) => write!(f, "{}b", b.get())?,
            }
        }
        Ok(())
    }
}

fn parse_ge(value: &str) -> Result<GilbertElliott, SpecError> {
    let whole = || SpecError::InvalidValue {
        key: "ge",
        value: value.into(),
        expected: GE,
    };
    let (mut p, mut r, mut k, mut h) = (None, None, None, None);
    for part in value.split('/') {
        let (name, v) = part.split_once(':').ok_or_else(whole)?;
        let (slot, key) = match name.trim().to_ascii_lowercase().as_str() {
            "p" => (&mut p, "ge.p"),
            "r" => (&mut r, "ge.r"),
            "k" => (&mut k, "ge.k"),
            "h" => (&mut h, "ge.h"),
            _ => return Err(whole()),
        };
        if slot.is_some() {
            return Err(SpecError::DuplicateKey { key });
        }
        let v = v.trim();
        let prob = parse_prob(v).ok_or_else(|| SpecError::InvalidValue {
            key,
            value: v.into(),
            expected: PROB,
        })?;
        if key == "ge.r" && prob == 0.0 {
            return Err(SpecError::InvalidValue {
                key,
                value: v.into(),
                expected: GE_R,
            });
        }
        *slot = Some(prob);
    }
    Ok(GilbertElliott {
        p_good_to_bad: p.ok_or_else(whole)?,
        p_bad_to_good: r.ok_or_else(whole)?,
        loss_good: k.unwrap_or(0.0),
        loss_bad: h.unwrap_or(1.0),
    })
}

/// `"5ms:normal"` → `("5ms", Some("normal"))`.
fn split_suffix(value: &str) -> (&str, Option<&str>) {
    match value.split_once(':') {
        Some((a, b)) => (a.trim(), Some(b.trim())),
        None => (value, None),
    }
}

fn parse_prob(s: &str) -> Option<f64> {
    let p = match s.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().ok()? / 100.0,
        None => s.parse::<f64>().ok()?,
    };
    (p.is_finite() && (0.0..=1.0).contains(&p)).then_some(p)
}

/// Splits `"1.5ms"` into the number and its (lower-cased) unit.
fn split_unit(s: &str) -> (&str, String) {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..at], s[at..].trim().to_ascii_lowercase())
}

/// `number × scale` for a plain decimal (`12`, `1.5`), rounding down below
/// one unit of the result; `None` on anything else or on overflow.
fn scaled_decimal(number: &str, scale: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) || int.len() > 20 || frac.len() > 18 {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let frac_scale = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    int.checked_mul(scale)?
        .checked_add(frac_value.checked_mul(scale)? / frac_scale)
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (number, unit) = split_unit(s);
    let scale = match unit.as_str() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "" if number.bytes().all(|b| b == b'0') && !number.is_empty() => 1,
        _ => return None,
    };
    let ns = u64::try_from(scaled_decimal(number, scale)?).ok()?;
    Some(Duration::from_nanos(ns))
}

fn parse_rate(s: &str) -> Option<NonZeroU64> {
    let (number, unit) = split_unit(s);
    let scale = match unit.as_str() {
        "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        _ => return None,
    };
    NonZeroU64::new(u64::try_from(scaled_decimal(number, scale)?).ok()?)
}

fn parse_queue(s: &str) -> Option<QueueLimit> {
    if let Some(d) = parse_duration(s) {
        return (!d.is_zero()).then_some(QueueLimit::Time(d));
    }
    let (number, unit) = split_unit(s);
    let scale = match unit.as_str() {
        "b" => 1,
        "kb" => 1_000,
        "kib" => 1_024,
        "mb" => 1_000_000,
        "mib" => 1_048_576,
        _ => return None,
    };
    let bytes = usize::try_from(scaled_decimal(number, scale)?).ok()?;
    NonZeroUsize::new(bytes).map(QueueLimit::Bytes)
}

/// A probability as the shortest percentage that parses back to the same
/// `f64`, else as a plain fraction (which always does).
struct Prob(f64);

impl fmt::Display for Prob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0;
        let pct = p * 100.0;
        let short = format!("{pct:.9}");
        let short = short.trim_end_matches('0').trim_end_matches('.');
        for candidate in [short.to_owned(), format!("{pct}")] {
            if parse_prob(&format!("{candidate}%")) == Some(p) {
                return write!(f, "{candidate}%");
            }
        }
        write!(f, "{p}")
    }
}

/// A duration in the largest unit that keeps it whole.
struct Dur(Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        if ns == 0 {
            f.write_str("0ms")
        } else if ns.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", ns / 1_000_000_000)
        } else if ns.is_multiple_of(1_000_000) {
            write!(f, "{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1_000) {
            write!(f, "{}us", ns / 1_000)
        } else {
            write!(f, "{ns}ns")
        }
    }
}

/// A rate in the largest SI unit that keeps it whole.
struct Rate(u64);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.0;
        for (scale, unit) in [
            (1_000_000_000, "gbit"),
            (1_000_000, "mbit"),
            (1_000, "kbit"),
        ] {
            if bits.is_multiple_of(scale) {
                return write!(f, "{}{unit}", bits / scale);
            }
        }
        write!(f, "{bits}bit")
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::PRESETS;
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("1.5ms"), Some(Duration::from_micros(1500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("99999999999999999999999s"), None);
        assert_eq!(parse_rate("2Mbit").map(NonZeroU64::get), Some(2_000_000));
        assert_eq!(parse_rate("0kbit"), None);
        assert_eq!(parse_rate("2mb"), None);
        assert_eq!(
            parse_queue("64kib"),
            NonZeroUsize::new(65_536).map(QueueLimit::Bytes)
        );
        assert_eq!(parse_prob("0.5%"), Some(0.005));
        assert_eq!(parse_prob("101%"), None);
        assert_eq!(parse_prob("NaN"), None);
        assert_eq!(format!("{}", Prob(0.07)), "7%");
        assert_eq!(format!("{}", Prob(1.0 / 3.0)), "0.3333333333333333");
        assert_eq!(format!("{}", Rate(1_500_000)), "1500kbit");
        assert_eq!(format!("{}", Dur(Duration::from_micros(1500))), "1500us");
    }

    #[test]
    fn every_preset_parses_and_round_trips() {
        for name in PRESETS {
            let cfg: LinkConfig = name.parse().expect("preset parses");
            assert_eq!(cfg.to_string().parse::<LinkConfig>(), Ok(cfg));
        }
        let err = "nosuch".parse::<LinkConfig>().expect_err("unknown");
        for name in PRESETS {
            assert!(err.to_string().contains(name), "{err} lists {name}");
        }
    }
}
