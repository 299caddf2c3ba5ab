//! Small dense linear least squares (normal equations solved by Cholesky), enough for the
//! at most a few dozen unknowns of a polynomial fit.

/// Accumulates the normal equations `AᵀW A x = AᵀW b` of a weighted linear least-squares
/// problem, one row at a time, for several right-hand sides sharing the design matrix.
#[derive(Debug, Clone)]
pub struct NormalEquations {
    n: usize,
    rhs: usize,
    ata: Vec<f64>,
    atb: Vec<f64>,
}

impl NormalEquations {
    /// `n` unknowns, `rhs` right-hand sides.
    pub fn new(n: usize, rhs: usize) -> Self {
        Self {
            n,
            rhs,
            ata: vec![0.0; n * n],
            atb: vec![0.0; n * rhs],
        }
    }

    /// Adds one row of the design matrix with its right-hand sides and weight.
    pub fn add(&mut self, row: &[f64], b: &[f64], weight: f64) {
        debug_assert_eq!(row.len(), self.n);
        debug_assert_eq!(b.len(), self.rhs);
        for i in 0..self.n {
            let wi = weight * row[i];
            for (a, r) in self.ata[i * self.n..=i * self.n + i].iter_mut().zip(row) {
                *a += wi * r;
            }
            for (k, bk) in b.iter().enumerate() {
                self.atb[i * self.rhs + k] += wi * bk;
            }
        }
    }

    /// Solves; the solution of right-hand side `k` is `x[k]`. `None` if the system is
    /// singular (fewer independent rows than unknowns).
    pub fn solve(&self) -> Option<Vec<Vec<f64>>> {
        let n = self.n;
        // Scale to unit diagonal for conditioning.
        let d: Vec<f64> = (0..n)
            .map(|i| {
                let v = self.ata[i * n + i];
                if v > 0.0 { 1.0 / v.sqrt() } else { 0.0 }
            })
            .collect();
        if d.contains(&0.0) {
            return None;
        }
        let mut l = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let mut s = self.ata[i * n + j] * d[i] * d[j];
                for k in 0..j {
                    s -= l[i * n + k] * l[j * n + k];
                }
                if i == j {
                    if s <= 1e-13 {
                        return None;
                    }
                    l[i * n + i] = s.sqrt();
                } else {
                    l[i * n + j] = s / l[j * n + j];
                }
            }
        }
        let mut out = Vec::with_capacity(self.rhs);
        for k in 0..self.rhs {
            let mut y = vec![0.0; n];
            for i in 0..n {
                let mut s = self.atb[i * self.rhs + k] * d[i];
                for j in 0..i {
                    s -= l[i * n + j] * y[j];
                }
                y[i] = s / l[i * n + i];
            }
            let mut x = vec![0.0; n];
            for i in (0..n).rev() {
                let mut s = y[i];
                for j in i + 1..n {
                    s -= l[j * n + i] * x[j];
                }
                x[i] = s / l[i * n + i];
            }
            out.push(x.iter().zip(&d).map(|(x, d)| x * d).collect());
        }
        Some(out)
    }
}

/// Median of a slice (sorted copy); NaN for an empty slice.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_a_known_plane_exactly() {
        let mut ne = NormalEquations::new(3, 2);
        for i in 0..10 {
            let (x, y) = (i as f64 * 0.7 - 2.0, (i * i) as f64 * 0.1);
            ne.add(
                &[1.0, x, y],
                &[2.0 + 3.0 * x - y, -1.0 + 0.5 * y],
                1.0 + i as f64,
            );
        }
        let s = ne.solve().unwrap();
        for (got, want) in s[0].iter().zip([2.0, 3.0, -1.0]) {
            assert!((got - want).abs() < 1e-10, "{s:?}");
        }
        for (got, want) in s[1].iter().zip([-1.0, 0.0, 0.5]) {
            assert!((got - want).abs() < 1e-10, "{s:?}");
        }
    }

    #[test]
    fn singular_systems_are_refused() {
        let mut ne = NormalEquations::new(2, 1);
        ne.add(&[1.0, 2.0], &[1.0], 1.0);
        ne.add(&[2.0, 4.0], &[2.0], 1.0);
        assert!(ne.solve().is_none());
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
