//! Dense symmetric positive (semi-)definite systems: a cache-blocked Cholesky factorisation and
//! its solve. The destriper's coarse space and block preconditioner and the mosaic's joint
//! astrometric solve factorise matrices of a few thousand rows, larger than the caches: the
//! factorisation works in panels of [`PANEL`] columns, so that each row streams from memory
//! once per panel rather than once per column, and every inner product runs on independent
//! partial sums that vectorise.

/// Columns per panel of the factorisation.
const PANEL: usize = 64;

/// What the factorisation does with a pivot that is not clearly positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pivots {
    /// Give up: the matrix is not (numerically) positive definite.
    Refuse,
    /// Drop the column: its row and column of the factor become zero but for a unit diagonal,
    /// so that [`cholesky_solve`] on a vector that is 0 there solves the system restricted to
    /// the other columns and leaves it 0.
    Drop,
}

/// `Σ a[i]·b[i]` over the shorter length, in 8 interleaved partial sums (added in order).
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for lane in 0..8 {
            acc[lane] += x[lane] * y[lane];
        }
    }
    for (lane, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[lane] += x * y;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Lower Cholesky factor `L` (row-major `n × n`, upper triangle zero) of the symmetric `a`, of
/// which only the lower triangle is read, with the columns `pivots` dropped. A pivot is not
/// clearly positive when it is NaN or at most `min_pivot` times the largest diagonal element.
/// `None` when such a pivot is met with [`Pivots::Refuse`]; else the factor and, per column,
/// whether it was dropped.
pub fn cholesky(
    mut a: Vec<f64>,
    n: usize,
    min_pivot: f64,
    pivots: Pivots,
) -> Option<(Vec<f64>, Vec<bool>)> {
    assert_eq!(a.len(), n * n, "cholesky: a is not n × n");
    let max_diag = (0..n).map(|i| a[i * n + i]).fold(0.0, f64::max);
    let mut dropped = vec![false; n];
    for j0 in (0..n).step_by(PANEL) {
        let j1 = (j0 + PANEL).min(n);
        // The panel's columns, rows j0.. : subtract the columns before the panel.
        if j0 > 0 {
            let rest = &mut a[j0 * n..];
            let panel_rows: Vec<f64> = rest[..(j1 - j0) * n].to_vec();
            for i in j0..n {
                let row = i - j0;
                let (head, tail) = rest[row * n..row * n + n].split_at_mut(j0);
                for j in j0..j1.min(i + 1) {
                    let pivot_row = &panel_rows[(j - j0) * n..(j - j0) * n + j0];
                    tail[j - j0] -= dot(head, pivot_row);
                }
            }
        }
        // Within the panel, column by column.
        for j in j0..j1 {
            let d = a[j * n + j] - dot(&a[j * n + j0..j * n + j], &a[j * n + j0..j * n + j]);
            if d.is_nan() || d <= min_pivot * max_diag {
                if pivots == Pivots::Refuse {
                    return None;
                }
                dropped[j] = true;
                a[j * n..j * n + j].fill(0.0);
                a[j * n + j] = 1.0;
                for i in j + 1..n {
                    a[i * n + j] = 0.0;
                }
                continue;
            }
            let d = d.sqrt();
            a[j * n + j] = d;
            let (upper, lower) = a.split_at_mut((j + 1) * n);
            let pivot = &upper[j * n + j0..j * n + j];
            for i in j + 1..n {
                let row = &mut lower[(i - j - 1) * n..(i - j) * n];
                let s = dot(&row[j0..j], pivot);
                row[j] = (row[j] - s) / d;
            }
        }
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Some((a, dropped))
}

/// `v ← (L Lᵀ)⁻¹ v` for a row-major lower factor `l` of size `n` from [`cholesky`].
pub fn cholesky_solve(l: &[f64], n: usize, v: &mut [f64]) {
    for i in 0..n {
        let row = &l[i * n..i * n + i];
        v[i] = (v[i] - dot(row, &v[..i])) / l[i * n + i];
    }
    // Lᵀ x = y by rows of L: x_i is final once the rows below have been applied.
    for i in (0..n).rev() {
        v[i] /= l[i * n + i];
        let x = v[i];
        for (vj, &lij) in v[..i].iter_mut().zip(&l[i * n..i * n + i]) {
            *vj -= lij * x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `B Bᵀ + n·I`-like symmetric positive definite matrix with a known solution.
    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let b: Vec<f64> = (0..n * n).map(|_| r.random::<f64>() - 0.5).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = dot(&b[i * n..(i + 1) * n], &b[j * n..(j + 1) * n]);
            }
            a[i * n + i] += 1.0;
        }
        a
    }

    fn matvec(a: &[f64], n: usize, x: &[f64]) -> Vec<f64> {
        (0..n).map(|i| dot(&a[i * n..(i + 1) * n], x)).collect()
    }

    #[test]
    fn solves_across_panel_boundaries() {
        for n in [1, 3, 63, 64, 65, 130, 200] {
            let a = spd(n, n as u64);
            let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let mut v = matvec(&a, n, &x);
            let (l, dropped) = cholesky(a.clone(), n, 1e-13, Pivots::Refuse).unwrap();
            assert!(dropped.iter().all(|d| !d));
            // L Lᵀ = A, upper triangle zero.
            for i in 0..n {
                for j in 0..n {
                    let llt = dot(&l[i * n..i * n + n], &l[j * n..j * n + n]);
                    assert!(
                        (llt - a[i * n + j]).abs() < 1e-10 * n as f64,
                        "{n}: {i},{j}"
                    );
                    if j > i {
                        assert_eq!(l[i * n + j], 0.0);
                    }
                }
            }
            cholesky_solve(&l, n, &mut v);
            let err = v
                .iter()
                .zip(&x)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-10, "{n}: {err}");
        }
    }

    #[test]
    fn the_upper_triangle_is_not_read() {
        let n = 90;
        let a = spd(n, 4);
        let mut garbage = a.clone();
        for i in 0..n {
            for j in i + 1..n {
                garbage[i * n + j] = f64::NAN;
            }
        }
        let want = cholesky(a, n, 0.0, Pivots::Refuse).unwrap();
        assert_eq!(cholesky(garbage, n, 0.0, Pivots::Refuse).unwrap(), want);
    }

    #[test]
    fn dependent_columns_are_refused_or_dropped() {
        // Column 70 (after the first panel) repeats column 5: A is singular.
        let n = 100;
        let mut r = ChaCha8Rng::seed_from_u64(9);
        let mut b: Vec<f64> = (0..n * n).map(|_| r.random::<f64>() - 0.5).collect();
        for c in 0..n {
            b[70 * n + c] = b[5 * n + c];
        }
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = dot(&b[i * n..(i + 1) * n], &b[j * n..(j + 1) * n]);
            }
        }
        assert!(cholesky(a.clone(), n, 1e-8, Pivots::Refuse).is_none());
        let (l, dropped) = cholesky(a.clone(), n, 1e-8, Pivots::Drop).unwrap();
        let positions: Vec<usize> = (0..n).filter(|&i| dropped[i]).collect();
        assert_eq!(positions, vec![70], "only the repeated column");
        // A right-hand side in the range of the other columns, 0 at the dropped one.
        let x: Vec<f64> = (0..n)
            .map(|i| if i == 70 { 0.0 } else { (i as f64).cos() })
            .collect();
        let mut v = matvec(&a, n, &x);
        v[70] = 0.0;
        cholesky_solve(&l, n, &mut v);
        assert_eq!(v[70], 0.0);
        let back = matvec(&a, n, &v);
        let want = matvec(&a, n, &x);
        for i in (0..n).filter(|&i| i != 70) {
            assert!((back[i] - want[i]).abs() < 1e-8, "{i}");
        }
    }
}
