//! The link model: latency distributions, loss, duplication and reordering.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::SimError;
use super::trace::Tracer;

/// How long a message spends on a link.
///
/// Every sample is drawn from the simulator's seeded network RNG with integer and basic IEEE
/// floating-point arithmetic only (no platform math library), so a seed yields the same
/// latencies on every machine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Latency {
    /// Always exactly this long.
    Fixed(Duration),
    /// Uniformly distributed between `min` and `max` inclusive, at microsecond resolution.
    Uniform {
        /// The shortest latency.
        min: Duration,
        /// The longest latency; must not be below `min`.
        max: Duration,
    },
    /// A long-tailed latency: `floor` plus an exponentially distributed extra delay with the
    /// given `mean`. The extra delay is bounded by about 37 times `mean` (the resolution of the
    /// 53-bit uniform sample it is computed from), so a sample is always finite.
    Exponential {
        /// The minimum latency (propagation delay).
        floor: Duration,
        /// The mean of the extra (queueing) delay.
        mean: Duration,
    },
}

impl Default for Latency {
    /// A fixed millisecond.
    fn default() -> Self {
        Latency::Fixed(Duration::from_millis(1))
    }
}

/// Extra delay applied to a random subset of messages so later messages overtake them.
#[derive(Clone, Debug, PartialEq)]
pub struct Reorder {
    /// Probability that a message is held back (between 0 and 1).
    pub probability: f64,
    /// The extra delay of a held-back message is uniform in `[0, max_extra_delay]`.
    pub max_extra_delay: Duration,
}

/// A link's transmitter: how fast it puts bytes on the wire, and how many messages may wait
/// for it per channel (see [`LinkConfig::bandwidth`]).
///
/// With a bandwidth set, a directed link sends one message at a time: a message of `len`
/// bytes occupies the transmitter for `ceil(len × 1,000,000 / bytes_per_sec)` microseconds,
/// and only then starts its propagation [`Latency`]. Messages that find the transmitter busy
/// wait in a FIFO queue of their [`ChannelId`](llmkg_federation_core::ChannelId); when the
/// transmitter frees up it serves the channels by deficit round robin: each turn adds a
/// quantum of 1,500 bytes to a waiting channel's allowance, and a channel sends while its
/// allowance covers its next message. The channels share the link fairly in bytes, whatever
/// the sizes of their messages: a channel of small messages is not held to one message per
/// large message of a busy one. A message that finds its channel's queue
/// holding `queue_limit` messages is dropped ([`DropReason::Overflow`](super::DropReason)).
/// Messages a node sends to itself never use a transmitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bandwidth {
    /// Bytes per second of virtual time; must be positive.
    pub bytes_per_sec: u64,
    /// Messages that may wait per channel; must be positive. Default 1,024.
    pub queue_limit: usize,
}

impl Bandwidth {
    /// A transmitter of `bytes_per_sec` with the default queue limit of 1,024 per channel.
    pub fn new(bytes_per_sec: u64) -> Self {
        Self { bytes_per_sec, queue_limit: 1024 }
    }

    /// Sets how many messages may wait per channel.
    pub fn queue_limit(mut self, limit: usize) -> Self {
        self.queue_limit = limit;
        self
    }

    /// Microseconds the transmitter is busy with `len` bytes (rounded up).
    pub(super) fn serialization_us(&self, len: usize) -> u64 {
        let us = (len as u128 * 1_000_000).div_ceil(u128::from(self.bytes_per_sec.max(1)));
        u64::try_from(us).unwrap_or(u64::MAX)
    }
}

/// The behaviour of one directed link (or the default for all links).
///
/// With `reorder` unset a link is FIFO: messages are delivered in the order they were sent,
/// whatever latencies are sampled (a message is never delivered before one sent earlier on the
/// same link; ties are broken by send order). Duplicates obey the same rule. With `reorder`
/// set, a held-back message is still not delivered before the FIFO messages sent earlier, but
/// gets extra delay on top and does not hold later messages back, so they may overtake it; the
/// messages not held back stay FIFO among themselves.
///
/// Probabilities must be finite and within `[0, 1]` and a uniform latency needs
/// `min <= max` ([`validate`](Self::validate)); every simulator entry point that takes a
/// configuration checks it and refuses an invalid one with
/// [`SimError::InvalidLink`]. Durations saturate at the end of virtual time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkConfig {
    /// The latency distribution.
    pub latency: Latency,
    /// Probability that a message is lost (between 0 and 1; 1 takes the link down).
    pub loss: f64,
    /// Probability that a message is delivered twice (between 0 and 1). The copy gets its own
    /// latency sample and its own fate.
    pub duplicate: f64,
    /// Optional reordering; `None` keeps the link FIFO.
    pub reorder: Option<Reorder>,
    /// Optional transmitter with a bandwidth and per-channel queues; `None` (the default)
    /// sends every message the moment it is emitted, however many there are.
    pub bandwidth: Option<Bandwidth>,
}

impl LinkConfig {
    /// A lossless FIFO link with the given latency.
    pub fn with_latency(latency: Latency) -> Self {
        Self { latency, ..Self::default() }
    }

    /// Sets the loss probability.
    pub fn loss(mut self, probability: f64) -> Self {
        self.loss = probability;
        self
    }

    /// Sets the duplication probability.
    pub fn duplicate(mut self, probability: f64) -> Self {
        self.duplicate = probability;
        self
    }

    /// Enables reordering: with `probability`, a message is held back by up to `max_extra`.
    pub fn reorder(mut self, probability: f64, max_extra: Duration) -> Self {
        self.reorder = Some(Reorder { probability, max_extra_delay: max_extra });
        self
    }

    /// Gives the link a transmitter of limited bandwidth with per-channel fair queueing (see
    /// [`Bandwidth`]).
    pub fn bandwidth(mut self, bandwidth: Bandwidth) -> Self {
        self.bandwidth = Some(bandwidth);
        self
    }

    /// Checks the probabilities (finite, within `[0, 1]`: NaN and infinities are refused) and
    /// the latency bounds (`min <= max` for a uniform latency).
    pub fn validate(&self) -> Result<(), SimError> {
        let prob = |p: f64| p.is_finite() && (0.0..=1.0).contains(&p);
        if !prob(self.loss) {
            return Err(SimError::InvalidLink("loss probability must be within [0, 1]"));
        }
        if !prob(self.duplicate) {
            return Err(SimError::InvalidLink("duplication probability must be within [0, 1]"));
        }
        if let Some(r) = &self.reorder
            && !prob(r.probability)
        {
            return Err(SimError::InvalidLink("reorder probability must be within [0, 1]"));
        }
        if let Latency::Uniform { min, max } = &self.latency
            && min > max
        {
            return Err(SimError::InvalidLink("uniform latency needs min <= max"));
        }
        if let Some(b) = &self.bandwidth
            && (b.bytes_per_sec == 0 || b.queue_limit == 0)
        {
            return Err(SimError::InvalidLink("bandwidth and queue limit must be positive"));
        }
        Ok(())
    }

    pub(super) fn compile(&self) -> Result<CompiledLink, SimError> {
        self.validate()?;
        let latency = match &self.latency {
            Latency::Fixed(d) => LatencyUs::Fixed(micros(*d)),
            Latency::Uniform { min, max } => LatencyUs::Uniform(micros(*min), micros(*max)),
            Latency::Exponential { floor, mean } => {
                LatencyUs::Exponential(micros(*floor), micros(*mean) as f64)
            }
        };
        let (reorder, reorder_max) = match &self.reorder {
            Some(r) => (r.probability, micros(r.max_extra_delay)),
            None => (0.0, 0),
        };
        Ok(CompiledLink {
            latency,
            loss: self.loss,
            duplicate: self.duplicate,
            reorder,
            reorder_max,
            bandwidth: self.bandwidth,
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy, Debug)]
enum LatencyUs {
    Fixed(u64),
    Uniform(u64, u64),
    Exponential(u64, f64),
}

/// A validated [`LinkConfig`] in the units the hot path uses.
#[derive(Clone, Copy, Debug)]
pub(super) struct CompiledLink {
    latency: LatencyUs,
    pub(super) loss: f64,
    pub(super) duplicate: f64,
    reorder: f64,
    reorder_max: u64,
    pub(super) bandwidth: Option<Bandwidth>,
}

impl CompiledLink {
    /// Feeds the configuration into the trace hash (probabilities by their exact bits).
    pub(super) fn trace_into(&self, tracer: &mut Tracer) {
        match self.latency {
            LatencyUs::Fixed(us) => {
                tracer.u8(1);
                tracer.u64(us);
            }
            LatencyUs::Uniform(lo, hi) => {
                tracer.u8(2);
                tracer.u64(lo);
                tracer.u64(hi);
            }
            LatencyUs::Exponential(floor, mean) => {
                tracer.u8(3);
                tracer.u64(floor);
                tracer.u64(mean.to_bits());
            }
        }
        for p in [self.loss, self.duplicate, self.reorder] {
            tracer.u64(p.to_bits());
        }
        tracer.u64(self.reorder_max);
        // Only when set, so traces of runs without a bandwidth model are unchanged.
        if let Some(b) = self.bandwidth {
            tracer.u8(4);
            tracer.u64(b.bytes_per_sec);
            tracer.u64(b.queue_limit as u64);
        }
    }

    /// Samples a latency in microseconds.
    pub(super) fn sample_latency(&self, rng: &mut ChaCha8Rng) -> u64 {
        match self.latency {
            LatencyUs::Fixed(us) => us,
            LatencyUs::Uniform(lo, hi) => uniform_inclusive(rng, lo, hi),
            LatencyUs::Exponential(floor, mean) => {
                let extra = -ln_portable(unit_open_closed(rng)) * mean;
                // `as` saturates and maps NaN to 0; the product is finite and non-negative.
                floor.saturating_add(extra as u64)
            }
        }
    }

    /// If the message is held back, its extra delay in microseconds.
    pub(super) fn sample_reorder(&self, rng: &mut ChaCha8Rng) -> Option<u64> {
        if chance(rng, self.reorder) {
            Some(uniform_inclusive(rng, 0, self.reorder_max))
        } else {
            None
        }
    }
}

/// A uniform sample in `[lo, hi]` (requires `lo <= hi`; otherwise returns `lo`).
pub(super) fn uniform_inclusive(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        return lo;
    }
    let span = hi - lo;
    if span == u64::MAX {
        return rng.next_u64();
    }
    // Lemire's multiply-shift with rejection: unbiased and integer-only.
    let range = span + 1;
    let threshold = range.wrapping_neg() % range;
    loop {
        let x = rng.next_u64();
        let m = u128::from(x) * u128::from(range);
        if (m as u64) >= threshold {
            return lo + (m >> 64) as u64;
        }
    }
}

/// A uniform index in `[0, n)`; `n` must be non-zero (returns 0 otherwise).
pub(super) fn index_below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    uniform_inclusive(rng, 0, n as u64 - 1) as usize
}

/// True with probability `p`; never draws from the RNG when `p` is 0 (or NaN) or at least 1.
pub(super) fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    if p.is_nan() || p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        unit_closed_open(rng) < p
    }
}

const INV_2_53: f64 = 1.0 / (1u64 << 53) as f64;

/// Uniform in `[0, 1)` with 53 random bits.
fn unit_closed_open(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * INV_2_53
}

/// Uniform in `(0, 1]` with 53 random bits.
fn unit_open_closed(rng: &mut ChaCha8Rng) -> f64 {
    ((rng.next_u64() >> 11) + 1) as f64 * INV_2_53
}

/// Natural logarithm of a positive normal `x` using only IEEE basic operations, so the result
/// is bit-identical on every platform (unlike `f64::ln`, which calls the platform's libm).
fn ln_portable(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 || !x.is_normal() {
        return 0.0;
    }
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | (1023u64 << 52));
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        exponent += 1;
    }
    // ln(m) = 2 atanh(z) with z = (m - 1) / (m + 1), |z| <= 0.172.
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let mut term = z;
    let mut sum = 0.0;
    let mut k = 1.0;
    for _ in 0..14 {
        sum += term / k;
        term *= z2;
        k += 2.0;
    }
    exponent as f64 * std::f64::consts::LN_2 + 2.0 * sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn portable_ln_matches_std() {
        for &x in &[1e-16, 1e-9, 0.001, 0.1, 0.5, 0.9, 0.999999, 1.0] {
            let err = (ln_portable(x) - x.ln()).abs();
            assert!(err < 1e-12, "ln({x}): {} vs {}", ln_portable(x), x.ln());
        }
    }

    #[test]
    fn uniform_stays_in_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..10_000 {
            let v = uniform_inclusive(&mut rng, 10, 20);
            assert!((10..=20).contains(&v));
        }
        assert_eq!(uniform_inclusive(&mut rng, 5, 5), 5);
        assert_eq!(index_below(&mut rng, 0), 0);
    }

    #[test]
    fn exponential_has_roughly_the_configured_mean() {
        let link = LinkConfig::with_latency(Latency::Exponential {
            floor: Duration::from_millis(1),
            mean: Duration::from_millis(10),
        })
        .compile()
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 20_000u64;
        let total: u64 = (0..n).map(|_| link.sample_latency(&mut rng)).sum();
        let mean = total / n;
        assert!((10_000..12_000).contains(&mean), "mean {mean}us");
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert!(LinkConfig::default().loss(1.5).validate().is_err());
        assert!(LinkConfig::default().duplicate(f64::NAN).validate().is_err());
        assert!(LinkConfig::default().reorder(-0.1, Duration::ZERO).validate().is_err());
        let bad = Latency::Uniform { min: Duration::from_millis(2), max: Duration::from_millis(1) };
        assert!(LinkConfig::with_latency(bad).validate().is_err());
        assert!(LinkConfig::default().loss(1.0).duplicate(0.5).validate().is_ok());
        assert!(LinkConfig::default().bandwidth(Bandwidth::new(0)).validate().is_err());
        let no_queue = Bandwidth::new(1).queue_limit(0);
        assert!(LinkConfig::default().bandwidth(no_queue).validate().is_err());
        assert_eq!(Bandwidth::new(1_000_000).serialization_us(1_500), 1_500);
        assert_eq!(Bandwidth::new(3).serialization_us(1), 333_334);
    }
}
