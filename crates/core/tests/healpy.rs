//! `Healpix::vec2pix` / `ang2pix` against healpy itself: zero mismatches demanded.
//!
//! Directions (edge cases and 10⁵ seeded random ones) are written as float64 to a temporary
//! file; Debian's `/usr/bin/python3` with python3-healpy pixelises exactly the same doubles at
//! nside 1, 256 and 8192 in RING and NESTED order; every answer must be equal.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use skypipe_core::healpix::{Healpix, Ordering};
use std::f64::consts::{FRAC_PI_2, FRAC_PI_4, PI};
use std::path::{Path, PathBuf};
use std::process::Command;

const PYTHON: &str = "/usr/bin/python3";
const NSIDES: [u64; 3] = [1, 256, 8192];

const SCRIPT: &str = r#"
import sys
try:
    import numpy as np
    import healpy as hp
except ImportError as e:
    print(f"cannot import healpy: {e}", file=sys.stderr)
    sys.exit(3)
vec_in, ang_in, out = sys.argv[1:4]
v = np.fromfile(vec_in, dtype="<f8").reshape(-1, 3)
a = np.fromfile(ang_in, dtype="<f8").reshape(-1, 2)
res = []
for nside in (1, 256, 8192):
    for nest in (False, True):
        res.append(hp.vec2pix(nside, v[:, 0], v[:, 1], v[:, 2], nest=nest).astype("<i8"))
        res.append(hp.ang2pix(nside, a[:, 0], a[:, 1], nest=nest).astype("<i8"))
np.concatenate(res).tofile(out)
print(hp.__version__)
"#;

/// The next representable double above `x` (finite, non-NaN `x`; `f64::next_up` needs Rust 1.86).
fn next_up(x: f64) -> f64 {
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let b = x.to_bits();
    f64::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

/// The next representable double below `x`.
fn next_down(x: f64) -> f64 {
    -next_up(-x)
}

fn from_z_phi(z: f64, phi: f64) -> [f64; 3] {
    let s = ((1.0 - z) * (1.0 + z)).max(0.0).sqrt();
    [s * phi.cos(), s * phi.sin(), z]
}

/// Longitudes on and next to the multiples of π/4 (base-pixel edges and corners).
fn edge_phis() -> Vec<f64> {
    let mut phis = Vec::new();
    for k in -8..=8 {
        let c = k as f64 * FRAC_PI_4;
        for d in [0.0, 1e-15, -1e-15, 1e-16, -1e-16, 1e-13, -1e-13] {
            phis.push(c + d);
        }
        phis.push(next_up(c));
        phis.push(next_down(c));
    }
    phis
}

/// `cos θ` values on and next to the region boundaries (±2/3), the sin θ switch (±0.99), the
/// equator and the poles.
fn edge_zs() -> Vec<f64> {
    let mut zs = Vec::new();
    for c in [2.0 / 3.0, 0.99, 0.0, 1.0, 0.5, 1.0 / 3.0] {
        for z in [c, next_up(c), next_down(c), c + 1e-15, c - 1e-15] {
            if z.abs() <= 1.0 {
                zs.push(z);
                zs.push(-z);
            }
        }
    }
    zs.extend([1e-300, -1e-300, 1e-17, -1e-17, -0.0]);
    zs
}

/// Points on (up to rounding) pixel edges at `nside`: in the equatorial belt the edges are the
/// lines `nside (½ + t) ± ¾ nside z = m` (`t = φ / (π/2)`); in the caps `t·nside·√(3(1−|z|)) = j`
/// and `(1−t)·nside·√(3(1−|z|)) = j` (`t` the fractional part).
fn edge_lines(nside: u64, rng: &mut ChaCha8Rng, out: &mut Vec<[f64; 3]>) {
    let n = nside as f64;
    for _ in 0..3000 {
        let tt: f64 = rng.random_range(0.0..4.0);
        let phi = tt * FRAC_PI_2;
        // Equatorial edges.
        let m = (n * (0.5 + tt)).floor()
            + rng.random_range(-(nside as i64)..=nside as i64) as f64 / 2.0;
        let m = m.round();
        for z in [(0.5 + tt - m / n) / 0.75, (m / n - 0.5 - tt) / 0.75] {
            if z.abs() <= 2.0 / 3.0 {
                out.push(from_z_phi(z, phi));
            }
        }
        // Polar edges.
        let tp = tt.fract();
        let j = rng.random_range(1..=nside) as f64;
        for f in [tp, 1.0 - tp] {
            if f > 0.0 {
                let r = j / (f * n); // √(3(1−|z|))
                let z = 1.0 - r * r / 3.0;
                if z > 2.0 / 3.0 && z <= 1.0 {
                    out.push(from_z_phi(z, phi));
                    out.push(from_z_phi(-z, phi));
                }
            }
        }
    }
    // Ring boundaries of the caps at every longitude edge: z = 1 − k²/(3 nside²).
    for k in 1..nside.min(64) {
        let z = 1.0 - (k * k) as f64 / (3.0 * n * n);
        for phi in [0.0, FRAC_PI_4, FRAC_PI_2, PI, -FRAC_PI_2] {
            out.push(from_z_phi(z, phi));
            out.push(from_z_phi(-z, phi));
        }
    }
}

fn directions() -> Vec<[f64; 3]> {
    let mut v: Vec<[f64; 3]> = Vec::new();
    // Axis-aligned and diagonal vectors with exact components, including signed zeros.
    for x in [-1.0, -0.0, 0.0, 1.0] {
        for y in [-1.0, -0.0, 0.0, 1.0] {
            for z in [-1.0, -0.0, 0.0, 1.0] {
                if x != 0.0 || y != 0.0 || z != 0.0 {
                    v.push([x, y, z]);
                }
            }
        }
    }
    // Next to the poles.
    for e in [1e-300, 1e-100, 1e-16, 1e-12, 1e-8, 1e-4] {
        for (sx, sy) in [
            (1.0, 0.0),
            (0.0, 1.0),
            (-1.0, 0.0),
            (0.0, -1.0),
            (1.0, 1.0),
            (-1.0, 1.0),
        ] {
            v.push([sx * e, sy * e, 1.0]);
            v.push([sx * e, sy * e, -1.0]);
        }
    }
    // The reported cdshealpix ring-hash trap: θ = 1.8°, φ = 0 (healpy: 180 at nside 256).
    v.push(from_z_phi(1.8f64.to_radians().cos(), 0.0));
    // Edge longitudes × edge latitudes.
    for &z in &edge_zs() {
        for &phi in &edge_phis() {
            v.push(from_z_phi(z, phi));
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(20240501);
    for nside in NSIDES {
        edge_lines(nside, &mut rng, &mut v);
    }
    // Some non-unit vectors (both sides normalise the same way).
    let scaled: Vec<[f64; 3]> = v.iter().step_by(7).map(|d| d.map(|c| c * 3.7)).collect();
    v.extend(scaled);
    let tiny: Vec<[f64; 3]> = v.iter().step_by(11).map(|d| d.map(|c| c * 1e-5)).collect();
    v.extend(tiny);
    // 10⁵ uniform random directions.
    for _ in 0..100_000 {
        let z: f64 = rng.random_range(-1.0..=1.0);
        let phi: f64 = rng.random_range(-PI..PI);
        v.push(from_z_phi(z, phi));
    }
    v
}

#[allow(clippy::approx_constant)] // 3.14159: HEALPix C++'s own literal for the sin θ switch
fn angles() -> Vec<(f64, f64)> {
    let mut a = Vec::new();
    let mut thetas = vec![
        0.0,
        1e-300,
        1e-10,
        0.01,
        next_down(0.01),
        PI - 0.01,
        3.14159 - 0.01,
        FRAC_PI_2,
        PI,
    ];
    thetas.push(next_down(PI));
    for z in edge_zs() {
        thetas.push(z.clamp(-1.0, 1.0).acos());
    }
    thetas.push(1.8f64.to_radians());
    let mut phis = edge_phis();
    phis.extend([7.0, -7.0, 100.0, 2.0 * PI, -2.0 * PI, 4.0 * PI + 1e-15]);
    for &t in &thetas {
        for &p in &phis {
            a.push((t, p));
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for _ in 0..20_000 {
        a.push((rng.random_range(0.0..=PI), rng.random_range(-10.0..10.0)));
    }
    a
}

fn write_f64(path: &Path, data: impl Iterator<Item = f64>) {
    let bytes: Vec<u8> = data.flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn zero_mismatches_against_healpy() {
    let vecs = directions();
    let angs = angles();
    let dir =
        TempDir(std::env::temp_dir().join(format!("skypipe-core-healpy-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let (vec_in, ang_in, out) = (
        dir.0.join("vec.f64"),
        dir.0.join("ang.f64"),
        dir.0.join("pix.i64"),
    );
    write_f64(&vec_in, vecs.iter().flatten().copied());
    write_f64(&ang_in, angs.iter().flat_map(|&(t, p)| [t, p]));

    let result = Command::new(PYTHON)
        .args(["-c", SCRIPT])
        .arg(&vec_in)
        .arg(&ang_in)
        .arg(&out)
        .output();
    let output = match result {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run {PYTHON} ({e}): install Debian's python3 with python3-healpy (`make test` does)"
        ),
    };
    assert!(
        output.status.success(),
        "{PYTHON} with healpy failed ({}): {}\ninstall python3-healpy (apt-get install python3-healpy; `make test` installs it)",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let healpy: Vec<i64> = std::fs::read(&out)
        .unwrap()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(healpy.len(), NSIDES.len() * 2 * (vecs.len() + angs.len()));

    let mut mismatches = Vec::new();
    let mut rest = &healpy[..];
    for nside in NSIDES {
        for ordering in [Ordering::Ring, Ordering::Nested] {
            let grid = Healpix::new(nside, ordering).unwrap();
            let (hv, r) = rest.split_at(vecs.len());
            let (ha, r) = r.split_at(angs.len());
            rest = r;
            for (v, &h) in vecs.iter().zip(hv) {
                let ours = grid.vec2pix(*v).unwrap() as i64;
                if ours != h {
                    mismatches.push(format!(
                        "vec2pix nside {nside} {ordering:?} {v:?}: ours {ours}, healpy {h}"
                    ));
                }
            }
            for (&(t, p), &h) in angs.iter().zip(ha) {
                let ours = grid.ang2pix(t, p).unwrap() as i64;
                if ours != h {
                    mismatches.push(format!("ang2pix nside {nside} {ordering:?} θ={t:e} φ={p:e}: ours {ours}, healpy {h}"));
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches against healpy {} (of {} directions and {} angle pairs), first: {:#?}",
        mismatches.len(),
        String::from_utf8_lossy(&output.stdout).trim(),
        vecs.len(),
        angs.len(),
        &mismatches[..mismatches.len().min(20)]
    );
    // The trap case pinned explicitly.
    let g = Healpix::new(256, Ordering::Ring).unwrap();
    assert_eq!(
        g.vec2pix(from_z_phi(1.8f64.to_radians().cos(), 0.0))
            .unwrap(),
        180
    );
}
