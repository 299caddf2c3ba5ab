//! Attitude time series and their interpolation to detector samples.
//!
//! An attitude is a list of strictly increasing times (seconds, `f64`) and unit quaternions
//! (scalar-last `[x, y, z, w]`), each rotating boresight-frame vectors into the sky frame.
//! Detector samples are integer indices `i` on a [`SampleClock`] with an exact rate:
//! `t_i = t0 + i / rate`. The rate is never inferred from differences of float times, and sample
//! times are compared with attitude times as `i / rate` against `time − t0`, so absolute times
//! (e.g. Unix epochs, whose doubles are 2.4e-7 s apart) cost no interpolation precision.
//!
//! Between two attitude samples the boresight turns at a constant rate about a fixed axis
//! (spherical linear interpolation along the shorter arc). Samples outside the attitude's time
//! span are refused ([`AttitudeError::OutOfSpan`]), never extrapolated.

use crate::quat::{self, Quat, QuatError};

/// Why an attitude, a sample clock or a sample range was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttitudeError {
    /// `times` and `quats` differ in length.
    #[error("attitude has {times} times but {quats} quaternions")]
    LengthMismatch {
        /// Number of times.
        times: usize,
        /// Number of quaternions.
        quats: usize,
    },
    /// An attitude needs at least one sample.
    #[error("attitude has no samples")]
    Empty,
    /// A time is NaN or infinite.
    #[error("attitude time {index} is {time}, not a finite number")]
    NonFiniteTime {
        /// Index of the attitude sample.
        index: usize,
        /// The offending value.
        time: f64,
    },
    /// Times must be strictly increasing.
    #[error(
        "attitude times are not strictly increasing: time {index} is {time} s after {previous} s"
    )]
    NotIncreasing {
        /// Index of the first offending attitude sample.
        index: usize,
        /// The time before it.
        previous: f64,
        /// Its time.
        time: f64,
    },
    /// A quaternion is not finite or not of unit norm.
    #[error("attitude quaternion {index}: {source}")]
    BadQuaternion {
        /// Index of the attitude sample.
        index: usize,
        /// What is wrong with it.
        source: QuatError,
    },
    /// The sample clock needs a finite start time and a finite, positive rate.
    #[error("sample clock t0 = {t0} s, rate = {rate} Hz: need finite t0 and finite rate > 0")]
    BadClock {
        /// Start time (s).
        t0: f64,
        /// Sample rate (Hz).
        rate: f64,
    },
    /// The sample range does not fit in `u64`.
    #[error("sample range starting at {first} with {len} samples overflows")]
    BadSampleRange {
        /// First sample index.
        first: u64,
        /// Number of samples.
        len: usize,
    },
    /// A sample lies outside the attitude's time span.
    #[error(
        "sample {sample} at t = {time} s is outside the attitude span [{start} s, {end} s]; refusing to extrapolate"
    )]
    OutOfSpan {
        /// Index of the first offending sample.
        sample: u64,
        /// Its time (s).
        time: f64,
        /// First attitude time (s).
        start: f64,
        /// Last attitude time (s).
        end: f64,
    },
}

/// Detector sample times from a reference time, an integer sample offset and an exact rate:
/// `t_i = t0 + (first + i) / rate` seconds.
///
/// With `first = 0` (the [`SampleClock::new`] form) `t0` is the time of sample 0. A clock on an
/// integer epoch ([`SampleClock::with_first_sample`]) keeps `t0 = 0` (times counted from the
/// epoch, as the attitude's are then) and the sample offset as an integer, so sample times
/// such as `epoch + 10823/180.3737 Hz` cost one rounding of a small number instead of the
/// 2.4e-7 s steps of a float64 Unix time near 1.9e9 s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleClock {
    t0: f64,
    rate: f64,
    first: u64,
}

impl SampleClock {
    /// A clock whose sample 0 is at `t0` seconds, ticking at exactly `rate` Hz (finite, > 0).
    pub fn new(t0: f64, rate: f64) -> Result<Self, AttitudeError> {
        if !(t0.is_finite() && rate.is_finite() && rate > 0.0) {
            return Err(AttitudeError::BadClock { t0, rate });
        }
        Ok(Self { t0, rate, first: 0 })
    }

    /// A clock whose sample `i` is at `t0 + (first + i) / rate` seconds, e.g. `t0 = 0` on an
    /// integer epoch with the timestream's integer sample offset `first` from it.
    pub fn with_first_sample(t0: f64, first: u64, rate: f64) -> Result<Self, AttitudeError> {
        Ok(Self {
            first,
            ..Self::new(t0, rate)?
        })
    }

    /// The integer sample offset of sample 0 from `t0` (0 for [`SampleClock::new`]).
    pub fn first_sample(&self) -> u64 {
        self.first
    }

    /// Time of sample 0 (s).
    pub fn t0(&self) -> f64 {
        self.t0
    }

    /// Sample rate (Hz).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Time of sample `i`: `t0 + (first + i) / rate` (one rounding for the division, one for
    /// the sum).
    #[inline(always)]
    pub fn time(&self, i: u64) -> f64 {
        self.t0 + self.since_t0(i)
    }

    /// Seconds from `t0` to sample `i`: `(first + i) / rate` (one rounding of exact integers,
    /// below 2⁵³).
    #[inline(always)]
    pub fn since_t0(&self, i: u64) -> f64 {
        (self.first + i) as f64 / self.rate
    }
}

/// Checks an attitude series: equal lengths, at least one sample, finite strictly increasing
/// times, and finite unit quaternions (`|‖q‖ − 1| ≤ 1e-6`).
pub fn validate_attitude(times: &[f64], quats: &[Quat]) -> Result<(), AttitudeError> {
    if times.len() != quats.len() {
        return Err(AttitudeError::LengthMismatch {
            times: times.len(),
            quats: quats.len(),
        });
    }
    if times.is_empty() {
        return Err(AttitudeError::Empty);
    }
    for (index, &time) in times.iter().enumerate() {
        if !time.is_finite() {
            return Err(AttitudeError::NonFiniteTime { index, time });
        }
        if index > 0 && time <= times[index - 1] {
            return Err(AttitudeError::NotIncreasing {
                index,
                previous: times[index - 1],
                time,
            });
        }
    }
    for (index, &q) in quats.iter().enumerate() {
        quat::check_unit(q).map_err(|source| AttitudeError::BadQuaternion { index, source })?;
    }
    Ok(())
}

/// A validated attitude series, ready for interpolation.
///
/// The quaternions are stored normalised (to rounding) and **sign-continuous** (`q_i · q_{i+1} ≥ 0`, the
/// first keeps its sign), so interpolated quaternions do not flip sign between intervals.
#[derive(Debug, Clone)]
pub struct Attitude {
    times: Vec<f64>,
    quats: Vec<Quat>,
}

impl Attitude {
    /// Validates (see [`validate_attitude`]) and stores an attitude series.
    pub fn new(times: &[f64], quats: &[Quat]) -> Result<Self, AttitudeError> {
        validate_attitude(times, quats)?;
        let mut stored: Vec<Quat> = Vec::with_capacity(quats.len());
        for &q in quats {
            // Renormalise only when rounding cannot explain the deviation, so that exactly
            // stored unit quaternions come back bit for bit at their own times.
            let n = quat::norm(q);
            let q = if (n - 1.0).abs() > 4.0 * f64::EPSILON {
                [q[0] / n, q[1] / n, q[2] / n, q[3] / n]
            } else {
                q
            };
            let q = match stored.last() {
                Some(&prev) if quat::dot(prev, q) < 0.0 => quat::neg(q),
                _ => q,
            };
            stored.push(q);
        }
        Ok(Self {
            times: times.to_vec(),
            quats: stored,
        })
    }

    /// Attitude times (s).
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// Stored quaternions: normalised and sign-continuous.
    pub fn quats(&self) -> &[Quat] {
        &self.quats
    }

    /// First and last attitude times (s): the span inside which samples may lie.
    pub fn span(&self) -> (f64, f64) {
        (self.times[0], self.times[self.times.len() - 1])
    }

    /// Interpolates the attitude to samples `first_sample .. first_sample + out.len()` of `clock`.
    ///
    /// A sample exactly at an attitude time (`i / rate == time − t0` in floating point) gets
    /// exactly that stored quaternion. Nothing is written unless every sample lies inside
    /// [`span`](Self::span).
    ///
    /// ```
    /// use skypipe_core::attitude::{Attitude, SampleClock};
    /// use skypipe_core::quat::{from_axis_angle, rotate};
    /// // 0° → 90° about ẑ over one second; 4 samples at 4 Hz from t = 0.
    /// let q = [0.0, 90.0].map(|deg: f64| from_axis_angle([0.0, 0.0, 1.0], deg.to_radians()).unwrap());
    /// let att = Attitude::new(&[0.0, 1.0], &q).unwrap();
    /// let mut out = [[0.0; 4]; 4];
    /// att.interpolate(&SampleClock::new(0.0, 4.0).unwrap(), 0, &mut out).unwrap();
    /// let v = rotate(out[1], [1.0, 0.0, 0.0]); // t = 0.25 s: 22.5°
    /// assert!((v[1].atan2(v[0]).to_degrees() - 22.5).abs() < 1e-12);
    /// ```
    pub fn interpolate(
        &self,
        clock: &SampleClock,
        first_sample: u64,
        out: &mut [Quat],
    ) -> Result<(), AttitudeError> {
        self.for_each_sample(clock, first_sample, out.len(), None, |k, q| out[k] = q)
    }

    /// Fails with [`AttitudeError::OutOfSpan`] naming the first of samples
    /// `first_sample .. first_sample + len` outside the span (compared as `i / rate` against
    /// `time − t0`), or [`AttitudeError::BadSampleRange`] if the range overflows `u64`.
    pub fn check_samples(
        &self,
        clock: &SampleClock,
        first_sample: u64,
        len: usize,
    ) -> Result<(), AttitudeError> {
        if len == 0 {
            return Ok(());
        }
        let last = u64::try_from(len - 1)
            .ok()
            .and_then(|l| first_sample.checked_add(l))
            .ok_or(AttitudeError::BadSampleRange {
                first: first_sample,
                len,
            })?;
        let (start, end) = self.span();
        let out_of_span = |sample: u64| {
            let time = clock.time(sample);
            AttitudeError::OutOfSpan {
                sample,
                time,
                start,
                end,
            }
        };
        // Compared relative to t0, as in the interpolation. Sample times are non-decreasing in
        // the index, so the ends decide.
        let (start_rel, end_rel) = (start - clock.t0(), end - clock.t0());
        if clock.since_t0(first_sample) < start_rel {
            return Err(out_of_span(first_sample));
        }
        if clock.since_t0(last) > end_rel {
            // Binary search for the first sample after `end`.
            let (mut lo, mut hi) = (first_sample, last);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if clock.since_t0(mid) > end_rel {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            return Err(out_of_span(lo));
        }
        Ok(())
    }

    /// Calls `f(k, left ⊗ q(t_{first+k}) ⊗ right)` for `k in 0..len`, in order, after checking
    /// the whole range. `fold = None` means no left/right factors (and bit-exact attitude ends).
    ///
    /// Slerp commutes with constant left and right factors, so they are folded into each
    /// interval's end points once instead of being multiplied in at every sample.
    #[inline(always)]
    pub(crate) fn for_each_sample<F: FnMut(usize, Quat)>(
        &self,
        clock: &SampleClock,
        first_sample: u64,
        len: usize,
        fold: Option<(Quat, Quat)>,
        mut f: F,
    ) -> Result<(), AttitudeError> {
        self.check_samples(clock, first_sample, len)?;
        if len == 0 {
            return Ok(());
        }
        let fold_q = |q: Quat| match fold {
            Some((l, r)) => quat::mul(quat::mul(l, q), r),
            None => q,
        };
        // Times are handled relative to the clock's t0: `s = i / rate` against `time − t0`.
        // For absolute times such as Unix epochs the subtraction is exact (Sterbenz), so no
        // precision is lost to the ~2e-7 s spacing of doubles near 1.7e9.
        let t0 = clock.t0();
        let times = &self.times[..];
        let quats = &self.quats[..];
        let nt = times.len();
        let q_end = fold_q(quats[nt - 1]);
        let end_rel = times[nt - 1] - t0;
        let s_first = clock.since_t0(first_sample);
        // The interval holding the first sample; a one-sample attitude has none (every sample
        // is then exactly at its time and gets `q_end`), so use a constant dummy segment.
        let mut i = times
            .partition_point(|&x| x - t0 <= s_first)
            .saturating_sub(1)
            .min(nt.saturating_sub(2));
        let mut qb = fold_q(quats[(i + 1).min(nt - 1)]);
        let mut seg = if nt == 1 {
            Segment::new(q_end, q_end, end_rel, f64::INFINITY)
        } else {
            Segment::new(fold_q(quats[i]), qb, times[i] - t0, times[i + 1] - t0)
        };
        // One call site for `f`, so that it is inlined into this loop.
        for k in 0..len {
            let s = clock.since_t0(first_sample + k as u64);
            while s >= seg.tb && i + 2 < nt {
                i += 1;
                let qa = qb;
                qb = fold_q(quats[i + 1]);
                seg = Segment::new(qa, qb, times[i] - t0, times[i + 1] - t0);
            }
            let q = if s >= end_rel { q_end } else { seg.eval(s) };
            f(k, q);
        }
        Ok(())
    }
}

/// One attitude interval prepared for fast slerp: `q(θ) = cos θ · q0 + sin θ · p`, where `p` is
/// the unit quaternion orthogonal to `q0` in the plane of `q0, q1` and `θ = Ω (t − ta)/(tb − ta)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    ta: f64,
    tb: f64,
    inv_dt: f64,
    omega: f64,
    q0: Quat,
    p: Quat,
    small: bool,
}

impl Segment {
    /// Prepares the interval `[ta, tb)` from `q0` to `q1` (unit, `q0·q1 ≥ 0` expected).
    #[inline]
    pub(crate) fn new(q0: Quat, q1: Quat, ta: f64, tb: f64) -> Self {
        let d = quat::dot(q0, q1);
        let v = [
            q1[0] - d * q0[0],
            q1[1] - d * q0[1],
            q1[2] - d * q0[2],
            q1[3] - d * q0[3],
        ];
        let n = quat::norm(v); // sin Ω
        let (omega, p) = if n > 0.0 {
            (n.atan2(d), [v[0] / n, v[1] / n, v[2] / n, v[3] / n])
        } else {
            (0.0, [0.0; 4])
        };
        Self {
            ta,
            tb,
            inv_dt: 1.0 / (tb - ta),
            omega,
            q0,
            p,
            small: omega <= SMALL_ANGLE,
        }
    }

    /// The interpolated quaternion at time `t` (exactly `q0` at `t == ta`).
    #[inline(always)]
    pub(crate) fn eval(&self, t: f64) -> Quat {
        let theta = (t - self.ta) * self.inv_dt * self.omega;
        let (s, c) = if self.small {
            sin_cos_small(theta)
        } else {
            sin_cos_full(theta)
        };
        let (q0, p) = (self.q0, self.p);
        [
            c * q0[0] + s * p[0],
            c * q0[1] + s * p[1],
            c * q0[2] + s * p[2],
            c * q0[3] + s * p[3],
        ]
    }
}

/// Below this angle the short polynomials of [`sin_cos_small`] are accurate to ~1 ulp.
const SMALL_ANGLE: f64 = 0.25;

/// `(sin x, cos x)` for `|x| ≤ 0.25` by Taylor series (truncation < 3e-18); exact at `x = 0`.
#[inline(always)]
fn sin_cos_small(x: f64) -> (f64, f64) {
    let x2 = x * x;
    let s = x
        * (1.0
            + x2 * (-1.0 / 6.0
                + x2 * (1.0 / 120.0
                    + x2 * (-1.0 / 5040.0 + x2 * (1.0 / 362880.0 + x2 * (-1.0 / 39916800.0))))));
    let c = 1.0
        + x2 * (-0.5
            + x2 * (1.0 / 24.0
                + x2 * (-1.0 / 720.0
                    + x2 * (1.0 / 40320.0 + x2 * (-1.0 / 3628800.0 + x2 * (1.0 / 479001600.0))))));
    (s, c)
}

/// `(sin x, cos x)` for `|x| ≤ π/2 (+ rounding)` by Taylor series to x²¹ / x²² (truncation
/// < 2e-18); exact at `x = 0`.
#[inline(always)]
fn sin_cos_full(x: f64) -> (f64, f64) {
    // Coefficients (−1)^k / (2k+1)! and (−1)^k / (2k)!, highest first.
    const S: [f64; 10] = [
        1.0 / 51090942171709440000.0,
        -1.0 / 121645100408832000.0,
        1.0 / 355687428096000.0,
        -1.0 / 1307674368000.0,
        1.0 / 6227020800.0,
        -1.0 / 39916800.0,
        1.0 / 362880.0,
        -1.0 / 5040.0,
        1.0 / 120.0,
        -1.0 / 6.0,
    ];
    const C: [f64; 11] = [
        -1.0 / 1124000727777607680000.0,
        1.0 / 2432902008176640000.0,
        -1.0 / 6402373705728000.0,
        1.0 / 20922789888000.0,
        -1.0 / 87178291200.0,
        1.0 / 479001600.0,
        -1.0 / 3628800.0,
        1.0 / 40320.0,
        -1.0 / 720.0,
        1.0 / 24.0,
        -0.5,
    ];
    let x2 = x * x;
    let mut s = S[0];
    for &k in &S[1..] {
        s = s * x2 + k;
    }
    let mut c = C[0];
    for &k in &C[1..] {
        c = c * x2 + k;
    }
    (x + x * x2 * s, 1.0 + x2 * c)
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_integer_epoch_and_sample_offset_give_exact_sample_times() {
        // Sample 10823 + i of a 180.3737 Hz clock counted from the integer epoch 1.9e9 s.
        let (epoch, rate, first) = (1_900_000_000u64, 180.3737, 10_823u64);
        let exact = SampleClock::with_first_sample(0.0, first, rate).unwrap();
        // Today's float clock: t0 = epoch + first / rate as one float64, times taken relative
        // to the epoch (exactly, by Sterbenz) as the kernels do.
        let t0 = epoch as f64 + first as f64 / rate;
        let float = SampleClock::new(t0 - epoch as f64, rate).unwrap();
        for i in [0u64, 1, 1000, 50_000, 1 << 24] {
            let n = (first + i) as f64;
            // Distance from the true time (first + i) / rate in seconds, with one rounding.
            let error = |t: f64| t.mul_add(rate, -n).abs() / rate;
            // One rounding: within half an ulp (≤ 3e-14 s here, where the float clock is off by
            // 1.1e-7 s).
            let t = exact.since_t0(i);
            assert!(error(t) <= 0.5 * t * f64::EPSILON, "{i}: {}", error(t));
            assert!(error(float.time(i)) > 1e-7, "{i}: {}", error(float.time(i)));
            assert_eq!(exact.time(i), exact.since_t0(i));
        }
        // Offsetting the clock is the same as offsetting the sample index.
        let plain = SampleClock::new(0.0, rate).unwrap();
        assert_eq!(exact.since_t0(5), plain.since_t0(first + 5));
        assert_eq!(exact.first_sample(), first);
    }
    use super::*;
    use crate::quat::{from_axis_angle, mul, neg, normalize, rotate, slerp};
    use proptest::prelude::*;

    fn close4(a: Quat, b: Quat, tol: f64) -> bool {
        (0..4).all(|i| (a[i] - b[i]).abs() <= tol)
    }

    fn same_rotation(a: Quat, b: Quat, tol: f64) -> bool {
        close4(a, b, tol) || close4(a, neg(b), tol)
    }

    #[test]
    fn polynomial_sin_cos_match_libm() {
        for i in 0..=20_000 {
            let x = i as f64 / 20_000.0 * (std::f64::consts::FRAC_PI_2 + 1e-9);
            let (s, c) = sin_cos_full(x);
            assert!((s - x.sin()).abs() < 3e-16, "sin {x}");
            assert!((c - x.cos()).abs() < 3e-16, "cos {x}");
            if x <= SMALL_ANGLE {
                let (s, c) = sin_cos_small(x);
                assert!((s - x.sin()).abs() < 2e-16, "small sin {x}");
                assert!((c - x.cos()).abs() < 2e-16, "small cos {x}");
            }
        }
        assert_eq!(sin_cos_small(0.0), (0.0, 1.0));
        assert_eq!(sin_cos_full(0.0), (0.0, 1.0));
    }

    #[test]
    fn clock_uses_the_exact_rate() {
        // 180.37 Hz for one hour: sample index i gives t0 + i/rate, no drift.
        let clock = SampleClock::new(1.7e9, 180.37).unwrap();
        let i = 649_332u64; // ≈ 3600 s
        let expected = 1.7e9 + 649_332.0 / 180.37;
        assert_eq!(clock.time(i), expected);
        assert!((clock.time(i) - 1.7e9 - 3600.0).abs() < 0.01);
    }

    #[test]
    fn rejects_bad_clocks() {
        for (t0, rate) in [
            (0.0, 0.0),
            (0.0, -1.0),
            (0.0, f64::NAN),
            (f64::INFINITY, 1.0),
            (0.0, f64::INFINITY),
        ] {
            assert!(matches!(
                SampleClock::new(t0, rate),
                Err(AttitudeError::BadClock { .. })
            ));
        }
    }

    #[test]
    fn rejects_bad_attitudes() {
        let q = [0.0, 0.0, 0.0, 1.0];
        assert_eq!(
            validate_attitude(&[0.0, 1.0], &[q]),
            Err(AttitudeError::LengthMismatch { times: 2, quats: 1 })
        );
        assert_eq!(validate_attitude(&[], &[]), Err(AttitudeError::Empty));
        assert!(matches!(
            validate_attitude(&[0.0, f64::NAN], &[q, q]),
            Err(AttitudeError::NonFiniteTime { index: 1, .. })
        ));
        assert_eq!(
            validate_attitude(&[0.0, 2.0, 2.0], &[q, q, q]),
            Err(AttitudeError::NotIncreasing {
                index: 2,
                previous: 2.0,
                time: 2.0
            })
        );
        assert!(matches!(
            validate_attitude(&[0.0, 2.0, 1.0], &[q, q, q]),
            Err(AttitudeError::NotIncreasing { index: 2, .. })
        ));
        let e = validate_attitude(&[0.0, 1.0], &[q, [0.0, 0.0, 0.0, 1.01]]).unwrap_err();
        assert!(matches!(
            e,
            AttitudeError::BadQuaternion {
                index: 1,
                source: QuatError::NotUnit { .. }
            }
        ));
        assert!(e.to_string().contains("attitude quaternion 1"), "{e}");
        assert!(matches!(
            validate_attitude(&[0.0, 1.0], &[q, [f64::NAN, 0.0, 0.0, 1.0]]),
            Err(AttitudeError::BadQuaternion {
                index: 1,
                source: QuatError::NotFinite { .. }
            })
        ));
        assert!(Attitude::new(&[0.0, 1.0], &[q, [0.0, 0.0, 0.0, 1.01]]).is_err());
    }

    #[test]
    fn refuses_samples_outside_the_span_and_names_them() {
        let q = [0.0, 0.0, 0.0, 1.0];
        let att = Attitude::new(&[10.0, 20.0], &[q, q]).unwrap();
        let clock = SampleClock::new(10.0, 2.0).unwrap(); // sample i at 10 + i/2 s
        let mut out = vec![[9.0; 4]; 21];
        att.interpolate(&clock, 0, &mut out).unwrap(); // 10 s ..= 20 s: inside
        let mut out = vec![[9.0; 4]; 22];
        let e = att.interpolate(&clock, 0, &mut out).unwrap_err();
        assert_eq!(
            e,
            AttitudeError::OutOfSpan {
                sample: 21,
                time: 20.5,
                start: 10.0,
                end: 20.0
            }
        );
        assert!(e.to_string().contains("sample 21 at t = 20.5 s"), "{e}");
        assert!(
            out.iter().all(|&q| q == [9.0; 4]),
            "nothing written on error"
        );
        let early = SampleClock::new(9.0, 2.0).unwrap();
        let e = att.interpolate(&early, 1, &mut out[..3]).unwrap_err();
        assert!(matches!(
            e,
            AttitudeError::OutOfSpan {
                sample: 1,
                time: 9.5,
                ..
            }
        ));
        assert!(matches!(
            att.check_samples(&clock, u64::MAX, 2),
            Err(AttitudeError::BadSampleRange { .. })
        ));
        // An empty range is always fine.
        att.interpolate(&early, 0, &mut []).unwrap();
    }

    #[test]
    fn single_sample_attitude_serves_only_its_instant() {
        let q = normalize([0.1, 0.2, 0.3, 0.9]).unwrap();
        let att = Attitude::new(&[5.0], &[q]).unwrap();
        let mut out = [[0.0; 4]; 1];
        att.interpolate(&SampleClock::new(5.0, 1.0).unwrap(), 0, &mut out)
            .unwrap();
        assert_eq!(out[0], q);
        let mut out = [[0.0; 4]; 2];
        assert!(
            att.interpolate(&SampleClock::new(5.0, 1.0).unwrap(), 0, &mut out)
                .is_err()
        );
    }

    /// A spin about a fixed axis at a constant rate, sampled at `n` attitude times, with the
    /// signs of the quaternions flipped at random (as an attitude file may store them).
    fn spin_attitude(
        axis: [f64; 3],
        rate: f64,
        q_init: Quat,
        times: &[f64],
        flips: &[bool],
    ) -> Vec<Quat> {
        times
            .iter()
            .zip(flips)
            .map(|(&t, &flip)| {
                let q = mul(from_axis_angle(axis, rate * t).unwrap(), q_init);
                if flip { neg(q) } else { q }
            })
            .collect()
    }

    #[test]
    fn attitude_ends_are_exact_at_attitude_times() {
        // Samples every 0.125 s hit every attitude time 0, 0.5, 1.0, 1.5 exactly.
        let times = [0.0, 0.5, 1.0, 1.5];
        let q_init = normalize([0.3, -0.1, 0.2, 0.9]).unwrap();
        let quats = spin_attitude(
            [0.2, 0.3, 1.0],
            1.3,
            q_init,
            &times,
            &[false, true, false, true],
        );
        let att = Attitude::new(&times, &quats).unwrap();
        let mut out = [[0.0; 4]; 13];
        att.interpolate(&SampleClock::new(0.0, 8.0).unwrap(), 0, &mut out)
            .unwrap();
        for (j, q) in att.quats().iter().enumerate() {
            assert_eq!(out[4 * j], *q, "attitude sample {j}");
            assert!(out[4 * j] == quats[j] || out[4 * j] == neg(quats[j]));
        }
        // Stored quaternions are sign-continuous.
        for w in att.quats().windows(2) {
            assert!(quat::dot(w[0], w[1]) >= 0.0);
        }
    }

    proptest! {
        #[test]
        fn interpolation_is_exact_for_a_constant_rate_spin(
            axis in prop::array::uniform3(-1.0f64..1.0).prop_filter("axis", |a| a.iter().map(|c| c * c).sum::<f64>() > 1e-3),
            spin in -6.0f64..6.0,           // rad/s; up to ~1.6 rad per 0.27 s attitude step
            q_init in prop::array::uniform4(-1.0f64..1.0).prop_filter("q", |q| quat::norm(*q) > 1e-2),
            flips in prop::collection::vec(any::<bool>(), 41),
            t0 in 0.0f64..0.3,
            rate in 5.0f64..200.0,
        ) {
            let q_init = normalize(q_init).unwrap();
            let times: Vec<f64> = (0..41).map(|i| i as f64 * 0.27).collect();
            let quats = spin_attitude(axis, spin, q_init, &times, &flips);
            let att = Attitude::new(&times, &quats).unwrap();
            let clock = SampleClock::new(t0, rate).unwrap();
            let n = ((10.8 - t0) * rate) as usize; // stays inside [0, 10.8]
            let mut out = vec![[0.0; 4]; n];
            att.interpolate(&clock, 0, &mut out).unwrap();
            for (k, q) in out.iter().enumerate() {
                let t = clock.time(k as u64);
                let expected = mul(from_axis_angle(axis, spin * t).unwrap(), q_init);
                prop_assert!(same_rotation(*q, expected, 1e-13), "sample {} t={}", k, t);
                prop_assert!((quat::norm(*q) - 1.0).abs() < 1e-14);
            }
            // Sign-continuous output: consecutive samples never jump to the other hemisphere.
            for w in out.windows(2) {
                prop_assert!(quat::dot(w[0], w[1]) > 0.0);
            }
        }

        #[test]
        fn interpolation_matches_reference_slerp_and_chunking(
            raw in prop::collection::vec(prop::array::uniform4(-1.0f64..1.0), 6),
            first in 0u64..40,
            split in 0usize..50,
        ) {
            // Arbitrary (possibly far apart) unit quaternions at irregular times.
            let quats: Vec<Quat> = raw.iter().map(|q| normalize([q[0], q[1], q[2], q[3] + 2.0]).unwrap()).collect();
            let times = [0.0, 0.7, 1.1, 2.9, 3.0, 4.2];
            let att = Attitude::new(&times, &quats).unwrap();
            let clock = SampleClock::new(-0.05, 23.0).unwrap();
            let n = 50usize; // last sample ≤ index 90: t ≤ 3.87 s
            let first = first + 2; // t ≥ 0.037 s
            let mut whole = vec![[0.0; 4]; n];
            att.interpolate(&clock, first, &mut whole).unwrap();
            for (k, q) in whole.iter().enumerate() {
                // Independent reference: locate the interval by linear scan, call quat::slerp.
                let t = clock.time(first + k as u64);
                let i = (0..times.len() - 1).rev().find(|&i| times[i] <= t).unwrap();
                let u = (t - times[i]) / (times[i + 1] - times[i]);
                let expected = slerp(quats[i], quats[i + 1], u);
                prop_assert!(same_rotation(*q, expected, 1e-14), "k={} t={}", k, t);
            }
            // Chunked calls give bit-identical answers.
            let mut parts = vec![[0.0; 4]; n];
            let (a, b) = parts.split_at_mut(split);
            att.interpolate(&clock, first, a).unwrap();
            att.interpolate(&clock, first + split as u64, b).unwrap();
            prop_assert_eq!(parts, whole);
        }
    }

    #[test]
    fn absolute_epoch_times_lose_no_precision() {
        // Unix-epoch times: doubles near 1.7e9 s are 2.4e-7 s apart, which at 6°/s would be a
        // 2.5e-8 rad error if sample times were formed as absolute doubles. The rotation angle
        // at sample i must match spin·((t0 − T) + i/rate) to 1e-13 rad.
        let big = 1.7e9;
        let spin = std::f64::consts::TAU / 60.0;
        let times: Vec<f64> = (0..=80).map(|j| big + j as f64 / 8.0).collect();
        let quats: Vec<Quat> = (0..=80)
            .map(|j| from_axis_angle([0.0, 0.0, 1.0], spin * j as f64 / 8.0).unwrap())
            .collect();
        let att = Attitude::new(&times, &quats).unwrap();
        let t0 = big + 0.3; // 0.3 s after the first attitude sample, up to rounding
        let offset = t0 - big; // exact
        let clock = SampleClock::new(t0, 180.37).unwrap();
        let mut out = vec![[0.0; 4]; 1500];
        att.interpolate(&clock, 0, &mut out).unwrap();
        for (i, q) in out.iter().enumerate() {
            let expected = spin * (offset + i as f64 / 180.37);
            let v = rotate(*q, [1.0, 0.0, 0.0]);
            let got = v[1].atan2(v[0]).rem_euclid(std::f64::consts::TAU);
            let diff = (got - expected.rem_euclid(std::f64::consts::TAU)).abs();
            assert!(diff < 1e-13, "sample {i}: {diff:e} rad");
        }
    }

    #[test]
    fn sample_times_do_not_drift() {
        // Interpolating an hour at 180.37 Hz: the last sample's rotation matches its exact time.
        let spin = std::f64::consts::TAU / 60.0; // 1 rpm
        let times: Vec<f64> = (0..=28_800).map(|i| i as f64 / 8.0).collect();
        let quats = spin_attitude(
            [0.0, 0.0, 1.0],
            spin,
            quat::IDENTITY,
            &times,
            &vec![false; times.len()],
        );
        let att = Attitude::new(&times, &quats).unwrap();
        let clock = SampleClock::new(0.0, 180.37).unwrap();
        let last = (3600.0 * 180.37) as u64;
        let mut out = [[0.0; 4]; 1];
        att.interpolate(&clock, last, &mut out).unwrap();
        let v = rotate(out[0], [1.0, 0.0, 0.0]);
        let expected = (spin * (last as f64 / 180.37)).rem_euclid(std::f64::consts::TAU);
        let got = v[1].atan2(v[0]).rem_euclid(std::f64::consts::TAU);
        assert!((got - expected).abs() < 1e-10, "{got} vs {expected}");
    }
}
