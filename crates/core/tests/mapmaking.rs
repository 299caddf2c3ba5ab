//! Map-making kernels: binning into sparse sub-maps, the per-pixel solve and the destriper.
//!
//! References: a dense full-sky binning with full 3×3 matrices and Gaussian elimination written
//! here; analytic noiseless skies; the statistical error of the destriper's baselines.
// Reference code indexes matrices the textbook way.
#![allow(clippy::needless_range_loop)]

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use skypipe_core::binning::{
    BinAccumulator, BinningError, Components, SparseMap, SubmapLayout, UNSEEN, eigenvalues_sym3,
    invert_sym3, rcond_sym3, reduce_in_chunks, submaps_in_mask, touched_mask,
};
use skypipe_core::destripe::{
    DestripeConfig, DestripeError, SingleProcess, Timestream, destripe, subtract_baselines,
};
use skypipe_core::pointing::stokes_weights_from_psi;

const NSIDE: u64 = 16;
const NPIX: u64 = 12 * NSIDE * NSIDE;

/// Standard normal deviate (Box–Muller), to keep to the dev-dependencies at hand.
fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn random_sky(rng: &mut ChaCha8Rng, npix: u64) -> Vec<[f64; 3]> {
    (0..npix)
        .map(|_| [1.0 + gauss(rng), 0.1 * gauss(rng), 0.1 * gauss(rng)])
        .collect()
}

/// A detector chunk: pixels, weights, noiseless signal, flags, 1/σ².
struct Chunk {
    pixels: Vec<u64>,
    weights: Vec<[f64; 3]>,
    signal: Vec<f64>,
    flags: Vec<u8>,
    inv_var: f64,
}

fn scan(w: [f64; 3], m: [f64; 3]) -> f64 {
    w[0] * m[0] + w[1] * m[1] + w[2] * m[2]
}

/// `ndet` detectors with `n` samples each over 200 random pixels at random angles, in random
/// order; one sample in 20 is flagged and carries a NaN value (and, half the time, a bad pixel).
fn simulate(rng: &mut ChaCha8Rng, sky: &[[f64; 3]], ndet: usize, n: usize) -> Vec<Chunk> {
    let seen: Vec<u64> = (0..200).map(|_| rng.random_range(0..NPIX)).collect();
    (0..ndet)
        .map(|_| {
            let eta = rng.random_range(0.8..1.0);
            let mut c = Chunk {
                pixels: vec![],
                weights: vec![],
                signal: vec![],
                flags: vec![],
                inv_var: rng.random_range(0.5..2.0),
            };
            for _ in 0..n {
                let p = seen[rng.random_range(0..seen.len())];
                let w = stokes_weights_from_psi(rng.random_range(0.0..std::f64::consts::PI), eta);
                let flagged = rng.random_range(0..20) == 0;
                c.pixels
                    .push(if flagged && rng.random() { u64::MAX } else { p });
                c.weights.push(w);
                c.signal.push(if flagged {
                    f64::NAN
                } else {
                    scan(w, sky[p as usize])
                });
                c.flags.push(if flagged { 0x80 } else { 0 });
            }
            c
        })
        .collect()
}

fn accumulate_all(acc: &mut BinAccumulator, chunks: &[Chunk]) {
    for c in chunks {
        acc.accumulate(&c.pixels, &c.weights, &c.signal, Some(&c.flags), c.inv_var)
            .unwrap();
    }
}

#[test]
fn noiseless_iqu_sky_is_recovered() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let sky = random_sky(&mut rng, NPIX);
    let chunks = simulate(&mut rng, &sky, 3, 3000);
    let mut acc = BinAccumulator::new(SubmapLayout::new(NPIX, 64).unwrap(), Components::Iqu);
    accumulate_all(&mut acc, &chunks);
    let map = acc.solve(1e-3);
    let mut solved = 0;
    for p in map.observed_pixels() {
        let Some(v) = map.value(p) else {
            assert!(map.rcond(p) < 1e-3);
            continue;
        };
        solved += 1;
        for c in 0..3 {
            assert!(
                (v[c] - sky[p as usize][c]).abs() < 1e-10,
                "pixel {p} comp {c}"
            );
        }
    }
    assert!(solved > 150, "{solved} pixels solved");
    // Only touched sub-maps are allocated, and fewer than all of them.
    let touched = acc.map().touched_submaps();
    assert!(touched.len() < 48);
    for sm in 0..48 {
        assert_eq!(acc.map().is_touched(sm), touched.contains(&sm));
    }
}

#[test]
fn pixel_seen_at_one_angle_is_cut() {
    let layout = SubmapLayout::new(NPIX, 16).unwrap();
    let mut acc = BinAccumulator::new(layout, Components::Iqu);
    let (pix_good, pix_one_angle, pix_two_hits) = (5u64, 700u64, 900u64);
    let mut pixels = vec![];
    let mut weights = vec![];
    for (k, psi) in [0.1, 0.9, 1.7, 2.5].iter().enumerate() {
        pixels.extend([pix_good, pix_one_angle]);
        weights.extend([
            stokes_weights_from_psi(*psi, 1.0),
            stokes_weights_from_psi(0.3, 1.0),
        ]);
        if k < 2 {
            pixels.push(pix_two_hits);
            weights.push(stokes_weights_from_psi(*psi, 1.0));
        }
    }
    let signal: Vec<f64> = weights.iter().map(|w| scan(*w, [1.0, 0.2, 0.1])).collect();
    acc.accumulate(&pixels, &weights, &signal, None, 1.0)
        .unwrap();
    let map = acc.solve(1e-3);
    assert!(map.value(pix_good).is_some());
    assert!(map.rcond(pix_good) > 0.1);
    assert!(
        map.rcond(pix_one_angle) < 1e-12,
        "{}",
        map.rcond(pix_one_angle)
    );
    assert!(map.rcond(pix_two_hits) < 1e-12);
    assert_eq!(map.value(pix_one_angle), None);
    assert_eq!(map.inv_cov(pix_one_angle), None);
    assert_eq!(map.cut_pixels(), vec![pix_one_angle, pix_two_hits]);
    assert_eq!(map.hits(pix_one_angle), 4.0);
    let dense = map.to_dense();
    assert_eq!(dense.values.len(), 3);
    assert_eq!(dense.values[0][pix_one_angle as usize], UNSEEN);
    assert_eq!(dense.values[1][3], UNSEEN);
    assert!((dense.values[1][pix_good as usize] - 0.2).abs() < 1e-12);
    assert_eq!(dense.hits[pix_good as usize], 4.0);
    assert_eq!(
        dense.rcond[pix_one_angle as usize],
        map.rcond(pix_one_angle)
    );
    // The same samples in intensity-only mode: every hit pixel is solved.
    let mut acc = BinAccumulator::new(layout, Components::I);
    let signal_i: Vec<f64> = weights.iter().map(|w| w[0] * 3.0).collect();
    acc.accumulate(&pixels, &weights, &signal_i, None, 2.0)
        .unwrap();
    let map = acc.solve(1e-3);
    for p in [pix_good, pix_one_angle, pix_two_hits] {
        let v = map.value(p).unwrap();
        assert!((v[0] - 3.0).abs() < 1e-14 && v[1] == 0.0 && v[2] == 0.0);
        assert_eq!(map.rcond(p), 1.0);
    }
    assert_eq!(map.to_dense().values.len(), 1);
    assert!(map.cut_pixels().is_empty());
}

#[test]
fn intensity_only_recovers_i() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let sky: Vec<[f64; 3]> = random_sky(&mut rng, NPIX)
        .iter()
        .map(|m| [m[0], 0.0, 0.0])
        .collect();
    let chunks = simulate(&mut rng, &sky, 2, 500);
    let mut acc = BinAccumulator::new(SubmapLayout::new(NPIX, 256).unwrap(), Components::I);
    accumulate_all(&mut acc, &chunks);
    assert_eq!(acc.map().stride(), 3);
    let map = acc.solve(1e-3);
    let mut n = 0;
    for p in map.observed_pixels() {
        let v = map.value(p).unwrap();
        assert!((v[0] - sky[p as usize][0]).abs() < 1e-12);
        let ic = map.inv_cov(p).unwrap();
        assert!(ic[0] > 0.0 && ic[1..] == [0.0; 5]);
        n += 1;
    }
    assert!(n > 100);
}

#[test]
fn chunked_accumulation_equals_whole() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let sky = random_sky(&mut rng, NPIX);
    let chunks = simulate(&mut rng, &sky, 2, 2000);
    for comps in [Components::I, Components::Iqu] {
        let layout = SubmapLayout::new(NPIX, 32).unwrap();
        let mut whole = BinAccumulator::new(layout, comps);
        accumulate_all(&mut whole, &chunks);
        let mut pieces = BinAccumulator::new(layout, comps);
        for c in &chunks {
            let mut start = 0;
            // Chunk lengths 0, 1, odd and larger.
            for len in [0usize, 1, 7, 0, 100, 333, 1].iter().cycle() {
                let end = (start + len).min(c.pixels.len());
                let r = start..end;
                pieces
                    .accumulate(
                        &c.pixels[r.clone()],
                        &c.weights[r.clone()],
                        &c.signal[r.clone()],
                        Some(&c.flags[r]),
                        c.inv_var,
                    )
                    .unwrap();
                start = end;
                if start == c.pixels.len() {
                    break;
                }
            }
        }
        // Same per-pixel order of additions: bit-identical.
        assert_eq!(whole, pieces);
    }
}

fn assert_maps_close(a: &SparseMap, b: &SparseMap, rtol: f64) {
    assert_eq!(a.touched_submaps(), b.touched_submaps());
    for sm in a.touched_submaps() {
        for (x, y) in a.block(sm).unwrap().iter().zip(b.block(sm).unwrap()) {
            assert!(
                (x - y).abs() <= rtol * (1.0 + x.abs()),
                "sub-map {sm}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn merged_partial_maps_equal_one_map() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let sky = random_sky(&mut rng, NPIX);
    let chunks = simulate(&mut rng, &sky, 3, 1500);
    let layout = SubmapLayout::new(NPIX, 64).unwrap();
    let mut one = BinAccumulator::new(layout, Components::Iqu);
    accumulate_all(&mut one, &chunks);
    // Three "ranks", one detector each.
    let parts: Vec<BinAccumulator> = chunks
        .chunks(1)
        .map(|c| {
            let mut acc = BinAccumulator::new(layout, Components::Iqu);
            accumulate_all(&mut acc, c);
            acc
        })
        .collect();
    let mut merged = BinAccumulator::new(layout, Components::Iqu);
    for p in &parts {
        merged.merge(p).unwrap();
    }
    assert_maps_close(one.map(), merged.map(), 1e-13);

    // The same through block export / import, as an allreduce over the union of touched
    // sub-maps in chunks of at most 2 blocks; each "rank" keeps only its own sub-maps.
    let mut union: Vec<usize> = parts
        .iter()
        .flat_map(|p| p.map().touched_submaps())
        .collect();
    union.sort_unstable();
    union.dedup();
    let mut ranks = parts.clone();
    let n = one.map().block_len();
    assert_eq!(n, 64 * 10);
    for group in union.chunks(2) {
        let mut sum = vec![0.0; n * group.len()];
        let mut buf = vec![0.0; n];
        for r in &ranks {
            for (k, &sm) in group.iter().enumerate() {
                r.map().export_block(sm, &mut buf).unwrap();
                for (s, b) in sum[k * n..(k + 1) * n].iter_mut().zip(&buf) {
                    *s += b;
                }
            }
        }
        for r in ranks.iter_mut() {
            for (k, &sm) in group.iter().enumerate() {
                let own = r.map().is_touched(sm);
                let stored = r
                    .map_mut()
                    .import_block(sm, &sum[k * n..(k + 1) * n], false)
                    .unwrap();
                assert_eq!(stored, own);
            }
        }
    }
    for (r, p) in ranks.iter().zip(&parts) {
        assert_eq!(r.map().touched_submaps(), p.map().touched_submaps());
        for sm in r.map().touched_submaps() {
            let a = r.map().block(sm).unwrap();
            let b = one.map().block(sm).unwrap();
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-13 * (1.0 + x.abs()));
            }
        }
    }
    // Solving the merged map gives the sky.
    let map = merged.solve(1e-3);
    for p in map.observed_pixels() {
        if let Some(v) = map.value(p) {
            assert!((v[0] - sky[p as usize][0]).abs() < 1e-10);
        }
    }
}

#[test]
fn hits_and_weights_are_conserved() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let sky = random_sky(&mut rng, NPIX);
    let chunks = simulate(&mut rng, &sky, 2, 1000);
    let mut acc = BinAccumulator::new(SubmapLayout::new(NPIX, 8).unwrap(), Components::Iqu);
    accumulate_all(&mut acc, &chunks);
    let good = chunks
        .iter()
        .flat_map(|c| &c.flags)
        .filter(|&&f| f == 0)
        .count();
    assert_eq!(acc.total_hits(), good as f64);
    let (mut cov, mut rhs) = ([0.0; 6], [0.0; 3]);
    for c in &chunks {
        for i in 0..c.pixels.len() {
            if c.flags[i] == 0 {
                let w = c.weights[i];
                let terms = [
                    w[0] * w[0],
                    w[0] * w[1],
                    w[0] * w[2],
                    w[1] * w[1],
                    w[1] * w[2],
                    w[2] * w[2],
                ];
                for k in 0..6 {
                    cov[k] += terms[k] * c.inv_var;
                }
                for k in 0..3 {
                    rhs[k] += w[k] * c.signal[i] * c.inv_var;
                }
            }
        }
    }
    let (mut cov_map, mut rhs_map) = ([0.0; 6], [0.0; 3]);
    for (_, r) in acc.map().records() {
        for k in 0..6 {
            cov_map[k] += r[1 + k];
        }
        for k in 0..3 {
            rhs_map[k] += r[7 + k];
        }
    }
    for k in 0..6 {
        assert!((cov[k] - cov_map[k]).abs() < 1e-10 * cov[0], "cov term {k}");
    }
    for k in 0..3 {
        assert!(
            (rhs[k] - rhs_map[k]).abs() < 1e-10 * rhs[0].abs().max(1.0),
            "rhs term {k}"
        );
    }
}

/// Slow reference: dense full-sky arrays of full 3×3 matrices, Gaussian elimination.
#[test]
fn sparse_binning_matches_dense_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let sky = random_sky(&mut rng, NPIX);
    let chunks = simulate(&mut rng, &sky, 3, 800);
    let mut hits = vec![0.0; NPIX as usize];
    let mut a = vec![[[0.0; 3]; 3]; NPIX as usize];
    let mut b = vec![[0.0; 3]; NPIX as usize];
    for c in &chunks {
        for i in 0..c.pixels.len() {
            if c.flags[i] != 0 {
                continue;
            }
            let p = c.pixels[i] as usize;
            hits[p] += 1.0;
            for r in 0..3 {
                for s in 0..3 {
                    a[p][r][s] += c.weights[i][r] * c.weights[i][s] * c.inv_var;
                }
                b[p][r] += c.weights[i][r] * c.signal[i] * c.inv_var;
            }
        }
    }
    let mut acc = BinAccumulator::new(SubmapLayout::new(NPIX, 4).unwrap(), Components::Iqu);
    accumulate_all(&mut acc, &chunks);
    let map = acc.solve(1e-2);
    for p in 0..NPIX {
        let pu = p as usize;
        assert_eq!(map.hits(p), hits[pu]);
        let Some(rec) = acc.map().pixel(p) else {
            assert_eq!(hits[pu], 0.0);
            continue;
        };
        let full = [
            a[pu][0][0],
            a[pu][0][1],
            a[pu][0][2],
            a[pu][1][1],
            a[pu][1][2],
            a[pu][2][2],
        ];
        for k in 0..6 {
            assert!((rec[1 + k] - full[k]).abs() < 1e-12 * (1.0 + full[k].abs()));
        }
        if hits[pu] == 0.0 {
            continue;
        }
        let x = gauss_solve(a[pu], b[pu]);
        match map.value(p) {
            Some(v) => {
                for k in 0..3 {
                    assert!((v[k] - x[k]).abs() < 1e-9, "pixel {p}");
                }
            }
            None => assert!(map.rcond(p) < 1e-2),
        }
    }
}

fn gauss_solve(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> [f64; 3] {
    for col in 0..3 {
        let piv = (col..3)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap();
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..3 {
            let f = a[row][col] / a[col][col];
            for k in col..3 {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let s: f64 = (row + 1..3).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

#[test]
fn symmetric_3x3_helpers() {
    // diag(1, 2, 4) rotated by 30° about z: eigenvalues 1, 2, 4; rcond 0.25.
    let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
    let r = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
    let d = [1.0, 2.0, 4.0];
    let m = |i: usize, j: usize| (0..3).map(|k| r[i][k] * d[k] * r[j][k]).sum::<f64>();
    let a = [m(0, 0), m(0, 1), m(0, 2), m(1, 1), m(1, 2), m(2, 2)];
    let e = eigenvalues_sym3(a);
    for k in 0..3 {
        assert!((e[k] - d[k]).abs() < 1e-14, "{e:?}");
    }
    assert!((rcond_sym3(a) - 0.25).abs() < 1e-14);
    let inv = invert_sym3(a).unwrap();
    let x = skypipe_core::binning::apply_sym3(
        &inv,
        skypipe_core::binning::apply_sym3(&a, [0.3, -1.0, 2.0]),
    );
    assert!((x[0] - 0.3).abs() < 1e-14 && (x[1] + 1.0).abs() < 1e-14 && (x[2] - 2.0).abs() < 1e-14);
    assert_eq!(
        eigenvalues_sym3([3.0, 0.0, 0.0, 1.0, 0.0, 2.0]),
        [1.0, 2.0, 3.0]
    );
    assert_eq!(rcond_sym3([0.0; 6]), 0.0);
    assert_eq!(rcond_sym3([f64::NAN, 0.0, 0.0, 1.0, 0.0, 1.0]), 0.0);
    assert_eq!(invert_sym3([1.0, 1.0, 0.0, 1.0, 0.0, 1.0]), None); // singular
}

#[test]
fn bad_input_is_refused_and_leaves_the_map_unchanged() {
    assert!(matches!(
        SubmapLayout::new(100, 3),
        Err(BinningError::BadLayout { .. })
    ));
    assert!(matches!(
        SubmapLayout::new(0, 4),
        Err(BinningError::BadLayout { .. })
    ));
    let layout = SubmapLayout::new(NPIX, 16).unwrap();
    assert_eq!(layout.n_submaps(), 192);
    assert_eq!(layout.split(35), (2, 3));
    let mut acc = BinAccumulator::new(layout, Components::Iqu);
    let w = [[0.5, 0.1, 0.2]; 3];
    acc.accumulate(&[1, 2, 3], &w, &[1.0, 2.0, 3.0], None, 1.0)
        .unwrap();
    let before = acc.clone();
    let e = acc.accumulate(&[1, NPIX, 3], &w, &[1.0, 2.0, 3.0], None, 1.0);
    assert_eq!(
        e,
        Err(BinningError::BadPixel {
            index: 1,
            pix: NPIX,
            npix: NPIX
        })
    );
    let e = acc.accumulate(&[1, 2], &w, &[1.0, 2.0], None, 1.0);
    assert!(matches!(
        e,
        Err(BinningError::LengthMismatch {
            what: "weights",
            ..
        })
    ));
    let e = acc.accumulate(&[1, 2, 3], &w, &[1.0, 2.0, 3.0], Some(&[0, 0]), 1.0);
    assert!(matches!(
        e,
        Err(BinningError::LengthMismatch { what: "flags", .. })
    ));
    for iv in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = acc.accumulate(&[1, 2, 3], &w, &[1.0, 2.0, 3.0], None, iv);
        assert!(matches!(e, Err(BinningError::BadNoiseWeight { .. })));
    }
    let e = acc.accumulate(&[1, 2, 3], &w, &[1.0, f64::NAN, 3.0], None, 1.0);
    assert_eq!(e, Err(BinningError::NotFinite { index: 1 }));
    assert_eq!(acc, before);
    // Flagged samples may carry anything.
    let used = acc
        .accumulate(
            &[1, NPIX, 3],
            &w,
            &[1.0, f64::NAN, 3.0],
            Some(&[0, 1, 0]),
            1.0,
        )
        .unwrap();
    assert_eq!(used, 2);
    // Block access.
    let mut buf = vec![0.0; 3];
    assert!(matches!(
        acc.map().export_block(0, &mut buf),
        Err(BinningError::LengthMismatch { .. })
    ));
    let mut buf = vec![0.0; acc.map().block_len()];
    assert!(matches!(
        acc.map().export_block(192, &mut buf),
        Err(BinningError::BadSubmap { .. })
    ));
    acc.map().export_block(5, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0.0));
    // Chunked reduction: nothing to do on an empty union; a limit below one block still moves
    // one block per call; blocks this process lacks are not allocated.
    let mut empty = SparseMap::new(layout, 10);
    assert_eq!(
        reduce_in_chunks(&mut empty, &[], 5, |_| unreachable!()),
        Ok(0)
    );
    let union = [0usize, 7, 9];
    let calls = reduce_in_chunks(acc.map_mut(), &union, 1, |buf| {
        buf.iter_mut().for_each(|x| *x *= 2.0)
    });
    assert_eq!(calls, Ok(3));
    assert_eq!(acc.map().touched_submaps(), vec![0]);
    assert_eq!(submaps_in_mask(&touched_mask(acc.map())), vec![0]);
    let other = BinAccumulator::new(SubmapLayout::new(NPIX, 32).unwrap(), Components::Iqu);
    assert_eq!(acc.merge(&other), Err(BinningError::Incompatible));
    let other = BinAccumulator::new(layout, Components::I);
    assert_eq!(acc.merge(&other), Err(BinningError::Incompatible));
}

// ---------------------------------------------------------------- destriping

/// A small scan: a `g × g` grid of pixels; detectors scan rows (family 0) or columns (family 1),
/// each line `reps` times in a row before moving on ("rings scanned repeatedly"), with the
/// a random polarisation angle per sample. (An angle advancing linearly with the sample index,
/// in step with the scan period, makes baseline patterns degenerate with column-wise Q/U maps.)
struct Scan {
    pixels: Vec<Vec<u64>>,
    weights: Vec<Vec<[f64; 3]>>,
}

fn grid_scan(rng: &mut ChaCha8Rng, g: usize, reps: usize, ndet: usize) -> Scan {
    let mut pixels = vec![];
    let mut weights = vec![];
    for det in 0..ndet {
        let columns = det % 2 == 1;
        let (mut pix, mut wts) = (vec![], vec![]);
        for line in 0..g {
            for _ in 0..reps {
                for j in 0..g {
                    let (r, c) = if columns { (j, line) } else { (line, j) };
                    pix.push((100 + r * g + c) as u64);
                    let psi = rng.random_range(0.0..std::f64::consts::PI);
                    wts.push(stokes_weights_from_psi(psi, 0.95));
                }
            }
        }
        pixels.push(pix);
        weights.push(wts);
    }
    Scan { pixels, weights }
}

fn signal_of(scan: &Scan, sky: &[[f64; 3]]) -> Vec<Vec<f64>> {
    scan.pixels
        .iter()
        .zip(&scan.weights)
        .map(|(p, w)| {
            p.iter()
                .zip(w)
                .map(|(&p, &w)| scan_px(w, sky[p as usize]))
                .collect()
        })
        .collect()
}

fn scan_px(w: [f64; 3], m: [f64; 3]) -> f64 {
    w[0] * m[0] + w[1] * m[1] + w[2] * m[2]
}

fn timestreams<'a>(scan: &'a Scan, signal: &'a [Vec<f64>], inv_var: f64) -> Vec<Timestream<'a>> {
    (0..scan.pixels.len())
        .map(|d| Timestream {
            pixels: &scan.pixels[d],
            weights: &scan.weights[d],
            signal: &signal[d],
            flags: None,
            inv_var,
            group: d,
        })
        .collect()
}

#[test]
fn noiseless_offsets_are_removed_exactly() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (g, reps, l) = (12, 3, 12);
    let scan = grid_scan(&mut rng, g, reps, 4);
    let sky = random_sky(&mut rng, NPIX);
    let mut signal = signal_of(&scan, &sky);
    let mut truth = vec![];
    for s in signal.iter_mut() {
        let offs: Vec<f64> = (0..s.len().div_ceil(l))
            .map(|_| 10.0 * gauss(&mut rng))
            .collect();
        for (i, x) in s.iter_mut().enumerate() {
            *x += offs[i / l];
        }
        truth.push(offs);
    }
    let n: usize = truth.iter().map(Vec::len).sum();
    let mean: f64 = truth.iter().flatten().sum::<f64>() / n as f64;
    let ts = timestreams(&scan, &signal, 1.0);
    let cfg = DestripeConfig {
        baseline_length: l,
        tolerance: 1e-13,
        max_iterations: 500,
        rcond_min: 1e-3,
        ..DestripeConfig::default()
    };
    let layout = SubmapLayout::new(NPIX, 64).unwrap();
    let out = destripe(&ts, layout, Components::Iqu, &cfg, &mut SingleProcess).unwrap();
    assert!(
        out.converged,
        "residual {} after {}",
        out.residual, out.iterations
    );
    assert!(out.iterations > 1 && out.iterations < 500);
    assert!(out.residual <= 1e-13);
    assert_eq!(out.residual_history.len(), out.iterations + 1);
    assert_eq!(out.residual_history[0], 1.0);
    let sum: f64 = out.baselines.iter().flatten().sum();
    assert!(sum.abs() < 1e-8 * n as f64, "baselines sum to {sum}");
    for (a, t) in out.baselines.iter().flatten().zip(truth.iter().flatten()) {
        assert!((a - (t - mean)).abs() < 1e-8, "{a} vs {}", t - mean);
    }
    // Destriped map = sky, with the common offset in I (as 2·mean, since w_I = ½).
    let mut checked = 0;
    for p in out.destriped.observed_pixels() {
        let v = out.destriped.value(p).unwrap();
        let s = sky[p as usize];
        assert!((v[0] - 2.0 * mean - s[0]).abs() < 1e-8);
        assert!((v[1] - s[1]).abs() < 1e-8 && (v[2] - s[2]).abs() < 1e-8);
        checked += 1;
    }
    assert_eq!(checked, g * g);
    // Subtracting the baselines and binning again gives the same map.
    let cleaned: Vec<Vec<f64>> = signal
        .iter()
        .zip(&out.baselines)
        .map(|(s, a)| {
            let mut o = vec![0.0; s.len()];
            subtract_baselines(s, a, l, &mut o);
            o
        })
        .collect();
    let mut acc = BinAccumulator::new(layout, Components::Iqu);
    for (d, c) in cleaned.iter().enumerate() {
        acc.accumulate(&scan.pixels[d], &scan.weights[d], c, None, 1.0)
            .unwrap();
    }
    let rebinned = acc.solve(1e-3);
    for p in rebinned.observed_pixels() {
        let (x, y) = (rebinned.value(p).unwrap(), out.destriped.value(p).unwrap());
        for k in 0..3 {
            assert!((x[k] - y[k]).abs() < 1e-10);
        }
    }
}

#[test]
fn offsets_with_white_noise_are_recovered_within_their_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (g, reps, l) = (16, 4, 16);
    let sigma = 0.5;
    let scan = grid_scan(&mut rng, g, reps, 4);
    let sky = random_sky(&mut rng, NPIX);
    let mut signal = signal_of(&scan, &sky);
    let mut truth = vec![];
    for s in signal.iter_mut() {
        let offs: Vec<f64> = (0..s.len().div_ceil(l))
            .map(|_| 5.0 * gauss(&mut rng))
            .collect();
        for (i, x) in s.iter_mut().enumerate() {
            *x += offs[i / l] + sigma * gauss(&mut rng);
        }
        truth.push(offs);
    }
    let ts = timestreams(&scan, &signal, 1.0 / (sigma * sigma));
    let cfg = DestripeConfig {
        baseline_length: l,
        tolerance: 1e-10,
        max_iterations: 300,
        rcond_min: 1e-3,
        ..DestripeConfig::default()
    };
    let out = destripe(
        &ts,
        SubmapLayout::new(NPIX, 64).unwrap(),
        Components::Iqu,
        &cfg,
        &mut SingleProcess,
    )
    .unwrap();
    assert!(out.converged);
    let n: usize = truth.iter().map(Vec::len).sum();
    let mean: f64 = truth.iter().flatten().sum::<f64>() / n as f64;
    // The error e = â − (a − mean) is A⁺ Fᵀ Z n with A = Fᵀ Z F, so its covariance is A⁺ and
    // eᵀ A e = (F e)ᵀ Z (F e) follows χ² with n − 1 degrees of freedom (one lost to the common
    // mean). Z is "bin, scan back, subtract, weight by 1/σ²": computed here with the binning
    // kernel, independently of the destriper's internals.
    let e: Vec<Vec<f64>> = out
        .baselines
        .iter()
        .zip(&truth)
        .map(|(av, tv)| av.iter().zip(tv).map(|(a, t)| a - (t - mean)).collect())
        .collect();
    let inv_var = 1.0 / (sigma * sigma);
    let fe: Vec<Vec<f64>> = e
        .iter()
        .zip(&scan.pixels)
        .map(|(ev, p)| (0..p.len()).map(|i| ev[i / l]).collect())
        .collect();
    let mut acc = BinAccumulator::new(SubmapLayout::new(NPIX, 64).unwrap(), Components::Iqu);
    for (d, y) in fe.iter().enumerate() {
        acc.accumulate(&scan.pixels[d], &scan.weights[d], y, None, inv_var)
            .unwrap();
    }
    let m = acc.solve(1e-3);
    let mut chi2_exact = 0.0;
    for (d, y) in fe.iter().enumerate() {
        for (i, &p) in scan.pixels[d].iter().enumerate() {
            let r = y[i] - scan_px(scan.weights[d][i], m.value(p).unwrap());
            chi2_exact += r * r * inv_var;
        }
    }
    let dof = (n - 1) as f64;
    eprintln!("white noise: χ² = {chi2_exact:.1} for {dof} degrees of freedom");
    assert!(
        (chi2_exact - dof).abs() < 5.0 * (2.0 * dof).sqrt(),
        "χ² = {chi2_exact} for {dof} degrees of freedom"
    );
    // Cruder: each baseline averages L samples of white noise, so its error is at least σ/√L
    // (a little more from the map's own noise).
    let var = sigma * sigma / l as f64;
    let chi2: f64 = e.iter().flatten().map(|x| x * x / var).sum::<f64>() / n as f64;
    eprintln!(
        "white noise: Σ e²/(σ²/L) / n = {chi2:.3}, {} iterations",
        out.iterations
    );
    assert!(
        (0.7..1.6).contains(&chi2),
        "reduced χ² = {chi2} over {n} baselines"
    );
    // Not trivially satisfied: the raw offsets are far outside that error.
    let chi2_raw: f64 = truth
        .iter()
        .flatten()
        .map(|t| (t - mean).powi(2) / var)
        .sum::<f64>()
        / n as f64;
    assert!(chi2_raw > 1000.0);
}

#[test]
fn destriping_beats_binning_on_one_over_f_noise() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (g, reps, l) = (16, 8, 16);
    let scan = grid_scan(&mut rng, g, reps, 4);
    let sky = random_sky(&mut rng, NPIX);
    let mut signal = signal_of(&scan, &sky);
    // AR(1) noise with correlation length 3000 samples (a ring takes 16: the knee is far above
    // the scan frequency), RMS 3, plus white noise 0.3.
    let tau = 3000.0;
    let rho: f64 = 1.0 - 1.0 / tau;
    let drift_rms = 3.0;
    for s in signal.iter_mut() {
        let mut x = drift_rms * gauss(&mut rng);
        for v in s.iter_mut() {
            x = rho * x + (1.0 - rho * rho).sqrt() * drift_rms * gauss(&mut rng);
            *v += x + 0.3 * gauss(&mut rng);
        }
    }
    let ts = timestreams(&scan, &signal, 1.0 / 0.09);
    let cfg = DestripeConfig {
        baseline_length: l,
        tolerance: 1e-8,
        max_iterations: 300,
        rcond_min: 1e-3,
        ..DestripeConfig::default()
    };
    let out = destripe(
        &ts,
        SubmapLayout::new(NPIX, 64).unwrap(),
        Components::Iqu,
        &cfg,
        &mut SingleProcess,
    )
    .unwrap();
    assert!(
        out.converged,
        "residual {} after {} iterations",
        out.residual, out.iterations
    );
    assert!(out.residual_history.last().unwrap() < &out.residual_history[0]);
    // Residual RMS over I (monopole removed: no map-maker can see it), Q and U.
    let rms = |m: &skypipe_core::binning::BinnedMap| {
        let pix: Vec<u64> = m.observed_pixels().collect();
        let res: Vec<[f64; 3]> = pix
            .iter()
            .map(|&p| {
                let v = m.value(p).unwrap();
                let s = sky[p as usize];
                [v[0] - s[0], v[1] - s[1], v[2] - s[2]]
            })
            .collect();
        let mono = res.iter().map(|r| r[0]).sum::<f64>() / res.len() as f64;
        let ss: f64 = res
            .iter()
            .map(|r| (r[0] - mono).powi(2) + r[1].powi(2) + r[2].powi(2))
            .sum();
        (ss / (3 * res.len()) as f64).sqrt()
    };
    let (binned, destriped) = (rms(&out.binned), rms(&out.destriped));
    assert!(
        binned >= 3.0 * destriped,
        "binned RMS {binned}, destriped RMS {destriped}"
    );
    eprintln!(
        "1/f: binned RMS {binned:.4}, destriped {destriped:.4} (×{:.1}), {} iterations, residual {:.2e}",
        binned / destriped,
        out.iterations,
        out.residual
    );
    // The two-level preconditioner (an exact block and a coarse template per detector) reaches
    // the same tolerance in no more iterations, with a residual map at least as good.
    let two_level = DestripeConfig {
        coarse_groups: ts.len(),
        block_baselines: 1024,
        ..cfg
    };
    let out2 = destripe(
        &ts,
        SubmapLayout::new(NPIX, 64).unwrap(),
        Components::Iqu,
        &two_level,
        &mut SingleProcess,
    )
    .unwrap();
    let destriped2 = rms(&out2.destriped);
    eprintln!(
        "1/f, two-level: destriped {destriped2:.6} (one-level {destriped:.6}), {} iterations",
        out2.iterations
    );
    assert!(out2.converged && out2.iterations <= out.iterations);
    assert!(destriped2 <= destriped * (1.0 + 1e-6));
}

#[test]
fn destriper_handles_flags_cut_pixels_and_rejects_bad_config() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (g, reps, l) = (8, 4, 10);
    let scan = grid_scan(&mut rng, g, reps, 2);
    let sky = random_sky(&mut rng, NPIX);
    let mut signal = signal_of(&scan, &sky);
    for s in signal.iter_mut() {
        for (i, x) in s.iter_mut().enumerate() {
            *x += (i / l) as f64 * 0.1;
        }
    }
    // Flag a whole baseline of detector 0 (NaN signal there) and add a pixel seen once.
    let mut flags = vec![0u8; signal[0].len()];
    for i in 20..30 {
        flags[i] = 1;
        signal[0][i] = f64::NAN;
    }
    let mut pixels0 = scan.pixels[0].clone();
    pixels0[5] = 3000; // seen once: cut, so its sample is ignored
    let mut ts = timestreams(&scan, &signal, 1.0);
    ts[0].flags = Some(&flags);
    ts[0].pixels = &pixels0;
    let cfg = DestripeConfig {
        baseline_length: l,
        ..DestripeConfig::default()
    };
    let layout = SubmapLayout::new(NPIX, 64).unwrap();
    let out = destripe(&ts, layout, Components::Iqu, &cfg, &mut SingleProcess).unwrap();
    assert!(out.converged);
    assert_eq!(out.baselines[0][2], 0.0); // no data: stays 0
    assert!(out.binned.cut_pixels().contains(&3000));
    assert_eq!(out.destriped.value(3000), None);
    // Intensity-only mode runs too.
    let out_i = destripe(&ts, layout, Components::I, &cfg, &mut SingleProcess).unwrap();
    assert!(out_i.converged);
    // Bad configuration and bad samples.
    let bad = DestripeConfig {
        baseline_length: 0,
        ..cfg
    };
    assert!(matches!(
        destripe(&ts, layout, Components::Iqu, &bad, &mut SingleProcess),
        Err(DestripeError::Config(_))
    ));
    let bad = DestripeConfig {
        tolerance: f64::NAN,
        ..cfg
    };
    assert!(matches!(
        destripe(&ts, layout, Components::Iqu, &bad, &mut SingleProcess),
        Err(DestripeError::Config(_))
    ));
    ts[1].inv_var = 0.0;
    assert!(matches!(
        destripe(&ts, layout, Components::Iqu, &cfg, &mut SingleProcess),
        Err(DestripeError::Detector {
            detector: 1,
            source: BinningError::BadNoiseWeight { .. }
        })
    ));
    // No data at all: nothing to solve.
    let out = destripe(&[], layout, Components::Iqu, &cfg, &mut SingleProcess).unwrap();
    assert!(out.converged && out.iterations == 0 && out.baselines.is_empty());
}

/// With one coarse template per baseline the coarse level is the exact inverse: the coarse
/// start alone solves the system, and no iteration is needed. (A check of the deflation
/// algebra: `E = Zᵀ A' Z` assembled from binned templates equals the operator.)
#[test]
fn a_complete_coarse_space_solves_at_the_start() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let (g, reps, l) = (8, 3, 8);
    let scan = grid_scan(&mut rng, g, reps, 4);
    let sky = random_sky(&mut rng, NPIX);
    let mut signal = signal_of(&scan, &sky);
    for s in signal.iter_mut() {
        for (i, x) in s.iter_mut().enumerate() {
            *x += (i / l) as f64 * 0.3 + 0.1 * gauss(&mut rng);
        }
    }
    let ts = timestreams(&scan, &signal, 1.0);
    let nb = signal[0].len().div_ceil(l);
    let layout = SubmapLayout::new(NPIX, 64).unwrap();
    let cfg = DestripeConfig {
        baseline_length: l,
        tolerance: 1e-9,
        max_iterations: 500,
        ..DestripeConfig::default()
    };
    let plain = destripe(&ts, layout, Components::Iqu, &cfg, &mut SingleProcess).unwrap();
    let full = DestripeConfig {
        coarse_groups: ts.len(),
        coarse_segments: nb,
        ..cfg
    };
    let out = destripe(&ts, layout, Components::Iqu, &full, &mut SingleProcess).unwrap();
    assert_eq!(out.coarse_dimension, ts.len() * nb);
    eprintln!(
        "plain: {} iterations; complete coarse space: {} iterations, start residual {:.2e}",
        plain.iterations, out.iterations, out.residual_history[0]
    );
    assert!(out.residual_history[0] < 1e-9, "{:?}", out.residual_history);
    assert_eq!(out.iterations, 0);
    for (a, b) in out
        .baselines
        .iter()
        .flatten()
        .zip(plain.baselines.iter().flatten())
    {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // One block holding every baseline: the preconditioner is the exact inverse (up to its
    // ridge), and CG converges at once.
    let mut one_group = ts.clone();
    for t in one_group.iter_mut() {
        t.group = 0;
    }
    let block = DestripeConfig {
        block_baselines: ts.len() * nb,
        ..cfg
    };
    let out = destripe(
        &one_group,
        layout,
        Components::Iqu,
        &block,
        &mut SingleProcess,
    )
    .unwrap();
    eprintln!("one exact block: {} iterations", out.iterations);
    assert!(
        out.converged && out.iterations <= 2,
        "{:?}",
        out.residual_history
    );
    for (a, b) in out
        .baselines
        .iter()
        .flatten()
        .zip(plain.baselines.iter().flatten())
    {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

/// Poor cross-linking: three "observations" each scan their own set of rows many times, and
/// a single column-scanning detector crosses them once. The two-level preconditioner (blocks
/// per observation, one coarse template each) needs fewer iterations than the diagonal and
/// gives the same baselines.
#[test]
fn poorly_cross_linked_scan_converges_with_the_two_level_preconditioner() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let (g, l) = (12, 6);
    let (mut pixels, mut weights, mut groups) = (vec![], vec![], vec![]);
    // Observation o scans rows 4o..4o+4, 8 times each, with two detectors.
    for o in 0..3 {
        for _det in 0..2 {
            let (mut pix, mut wts) = (vec![], vec![]);
            for row in 4 * o..4 * o + 4 {
                for _ in 0..8 {
                    for c in 0..g {
                        pix.push((100 + row * g + c) as u64);
                        let psi = rng.random_range(0.0..std::f64::consts::PI);
                        wts.push(stokes_weights_from_psi(psi, 0.95));
                    }
                }
            }
            pixels.push(pix);
            weights.push(wts);
            groups.push(o);
        }
    }
    // One detector crossing every row once (columns, one pass).
    let (mut pix, mut wts) = (vec![], vec![]);
    for c in 0..g {
        for row in 0..g {
            pix.push((100 + row * g + c) as u64);
            let psi = rng.random_range(0.0..std::f64::consts::PI);
            wts.push(stokes_weights_from_psi(psi, 0.95));
        }
    }
    pixels.push(pix);
    weights.push(wts);
    groups.push(3);
    let scan = Scan { pixels, weights };
    let sky = random_sky(&mut rng, NPIX);
    let mut signal = signal_of(&scan, &sky);
    for s in signal.iter_mut() {
        let mut x = 0.0;
        for v in s.iter_mut() {
            x += 0.05 * gauss(&mut rng);
            *v += x + 0.1 * gauss(&mut rng);
        }
    }
    let mut ts = timestreams(&scan, &signal, 100.0);
    for (t, &g) in ts.iter_mut().zip(&groups) {
        t.group = g;
    }
    let layout = SubmapLayout::new(NPIX, 64).unwrap();
    let diag = DestripeConfig {
        baseline_length: l,
        tolerance: 1e-10,
        max_iterations: 1000,
        ..DestripeConfig::default()
    };
    let two_level = DestripeConfig {
        coarse_groups: 4,
        block_baselines: 256,
        ..diag
    };
    let a = destripe(&ts, layout, Components::Iqu, &diag, &mut SingleProcess).unwrap();
    let b = destripe(&ts, layout, Components::Iqu, &two_level, &mut SingleProcess).unwrap();
    eprintln!(
        "poorly cross-linked: diagonal {} iterations, two-level {} iterations",
        a.iterations, b.iterations
    );
    assert!(a.converged && b.converged);
    assert_eq!(b.coarse_dimension, 4);
    assert!(b.iterations < a.iterations && b.iterations <= 100);
    // The same Q and U maps. (I is free up to offsets along rows: the crossing detector's
    // own baselines leave them unconstrained, null directions of the system that the two
    // solvers may fill differently.)
    for p in a.destriped.observed_pixels() {
        let (x, y) = (a.destriped.value(p).unwrap(), b.destriped.value(p).unwrap());
        assert!((x[1] - y[1]).abs() < 1e-6 && (x[2] - y[2]).abs() < 1e-6);
    }
}

// ------------------------------------------------- the Reduce trait across "processes"

/// An all-to-all exchange between threads standing in for MPI ranks: everyone deposits its
/// value, then everyone reads all of them (in rank order, so sums are deterministic).
struct Exchange<T> {
    barrier: std::sync::Barrier,
    slots: std::sync::Mutex<Vec<Option<T>>>,
}

impl<T: Clone> Exchange<T> {
    fn new(n: usize) -> Self {
        Self {
            barrier: std::sync::Barrier::new(n),
            slots: std::sync::Mutex::new(vec![None; n]),
        }
    }

    fn all(&self, rank: usize, value: T) -> Vec<T> {
        self.slots.lock().unwrap()[rank] = Some(value);
        self.barrier.wait();
        let all: Vec<T> = self
            .slots
            .lock()
            .unwrap()
            .iter()
            .map(|v| v.clone().unwrap())
            .collect();
        self.barrier.wait();
        all
    }
}

/// [`Reduce`] over threads, as an MPI stage would do it: the union of touched sub-maps is
/// summed block by block and each rank keeps only the blocks it holds.
struct ThreadReduce<'a> {
    rank: usize,
    blocks: &'a Exchange<Vec<(usize, Vec<f64>)>>,
    scalars: &'a Exchange<Vec<f64>>,
    map_reductions: usize,
}

impl skypipe_core::destripe::Reduce for ThreadReduce<'_> {
    fn reduce_map(&mut self, map: &mut SparseMap) {
        self.map_reductions += 1;
        // Union of touched sub-maps: sum of the masks.
        let all = self.scalars.all(
            self.rank,
            touched_mask(map).iter().map(|&m| m as f64).collect(),
        );
        let mut mask = vec![0u8; all[0].len()];
        for v in &all {
            for (m, x) in mask.iter_mut().zip(v) {
                *m |= u8::from(*x > 0.0);
            }
        }
        let union = submaps_in_mask(&mask);
        // Chunks of at most 3 blocks, each summed across ranks in rank order.
        let limit = 3 * map.block_len();
        let (rank, blocks) = (self.rank, self.blocks);
        reduce_in_chunks(map, &union, limit, |buf| {
            let all = blocks.all(rank, vec![(0, buf.to_vec())]);
            buf.fill(0.0);
            for v in &all {
                for (x, y) in buf.iter_mut().zip(&v[0].1) {
                    *x += y;
                }
            }
        })
        .unwrap();
    }

    fn sum(&mut self, values: &mut [f64]) {
        let all = self.scalars.all(self.rank, values.to_vec());
        values.fill(0.0);
        for v in all {
            for (x, y) in values.iter_mut().zip(v) {
                *x += y;
            }
        }
    }
}

/// The destriper split over 1, 2 and 3 "ranks" (threads holding different detectors) gives
/// the single-process baselines and map within floating-point summation order (1e-9).
#[test]
fn destriper_results_do_not_depend_on_the_number_of_ranks() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let (g, reps, l) = (12, 4, 12);
    let scan = grid_scan(&mut rng, g, reps, 4);
    let sky = random_sky(&mut rng, NPIX);
    let mut signal = signal_of(&scan, &sky);
    for s in signal.iter_mut() {
        let mut x = 0.0;
        for v in s.iter_mut() {
            x += 0.05 * gauss(&mut rng);
            *v += x + 0.2 * gauss(&mut rng);
        }
    }
    let ts = timestreams(&scan, &signal, 25.0);
    let cfg = DestripeConfig {
        baseline_length: l,
        tolerance: 1e-12,
        max_iterations: 300,
        rcond_min: 1e-3,
        ..DestripeConfig::default()
    };
    // Small sub-maps, so ranks hold different sets of them.
    let layout = SubmapLayout::new(NPIX, 8).unwrap();
    let one = destripe(&ts, layout, Components::Iqu, &cfg, &mut SingleProcess).unwrap();
    assert!(one.converged);
    for nranks in [1usize, 2, 3] {
        let blocks = Exchange::new(nranks);
        let scalars = Exchange::new(nranks);
        // Rank r holds detectors r, r + nranks, …
        let results: Vec<(Vec<usize>, skypipe_core::destripe::Destriped, usize)> =
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..nranks)
                    .map(|rank| {
                        let (blocks, scalars, ts) = (&blocks, &scalars, &ts);
                        s.spawn(move || {
                            let dets: Vec<usize> = (rank..ts.len()).step_by(nranks).collect();
                            let mine: Vec<Timestream> = dets.iter().map(|&d| ts[d]).collect();
                            let mut red = ThreadReduce {
                                rank,
                                blocks,
                                scalars,
                                map_reductions: 0,
                            };
                            let out =
                                destripe(&mine, layout, Components::Iqu, &cfg, &mut red).unwrap();
                            (dets, out, red.map_reductions)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
        for (dets, out, reductions) in &results {
            assert!(out.converged);
            // One reduction for the matrix, one per operator application (b and each
            // iteration), one for the final map.
            assert_eq!(*reductions, out.iterations + 3);
            assert!((out.iterations as i64 - one.iterations as i64).abs() <= 2);
            for (k, &d) in dets.iter().enumerate() {
                for (a, b) in out.baselines[k].iter().zip(&one.baselines[d]) {
                    assert!(
                        (a - b).abs() < 1e-9,
                        "{nranks} ranks, detector {d}: {a} vs {b}"
                    );
                }
            }
            for p in out.destriped.observed_pixels() {
                let (x, y) = (out.destriped.value(p), one.destriped.value(p));
                assert_eq!(x.is_some(), y.is_some());
                if let (Some(x), Some(y)) = (x, y) {
                    for c in 0..3 {
                        assert!((x[c] - y[c]).abs() < 1e-9, "{nranks} ranks, pixel {p}");
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------ properties

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> impl Strategy<Value = (u64, f64, f64, bool)> {
        (
            0..NPIX,
            0.0..std::f64::consts::PI,
            -10.0..10.0f64,
            prop::bool::weighted(0.1),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any split of a chunk gives bit-identical records; any split into two maps merged
        /// gives the same records within rounding; hits and I-weight are conserved.
        #[test]
        fn split_merge_and_conservation(
            samples in prop::collection::vec(sample(), 0..300),
            cut in 0usize..300,
            log_size in 0u32..9,
            iqu in any::<bool>(),
        ) {
            let comps = if iqu { Components::Iqu } else { Components::I };
            let layout = SubmapLayout::new(NPIX, 1 << log_size).unwrap();
            let pixels: Vec<u64> = samples.iter().map(|s| s.0).collect();
            let weights: Vec<[f64; 3]> =
                samples.iter().map(|s| stokes_weights_from_psi(s.1, 0.9)).collect();
            let signal: Vec<f64> = samples.iter().map(|s| s.2).collect();
            let flags: Vec<u8> = samples.iter().map(|s| u8::from(s.3)).collect();
            let cut = cut.min(samples.len());
            let mut whole = BinAccumulator::new(layout, comps);
            let used = whole.accumulate(&pixels, &weights, &signal, Some(&flags), 2.0).unwrap();
            let mut split = BinAccumulator::new(layout, comps);
            let mut a = BinAccumulator::new(layout, comps);
            let mut b = BinAccumulator::new(layout, comps);
            for (acc, r) in [(&mut a, 0..cut), (&mut b, cut..samples.len())] {
                split
                    .accumulate(&pixels[r.clone()], &weights[r.clone()], &signal[r.clone()], Some(&flags[r.clone()]), 2.0)
                    .unwrap();
                acc.accumulate(&pixels[r.clone()], &weights[r.clone()], &signal[r.clone()], Some(&flags[r]), 2.0)
                    .unwrap();
            }
            prop_assert_eq!(&whole, &split);
            a.merge(&b).unwrap();
            assert_maps_close(whole.map(), a.map(), 1e-13);
            let good = flags.iter().filter(|&&f| f == 0).count();
            prop_assert_eq!(used as usize, good);
            prop_assert_eq!(whole.total_hits(), good as f64);
            let c_ii: f64 = whole.map().records().map(|(_, r)| r[1]).sum();
            prop_assert!((c_ii - 0.5 * good as f64).abs() < 1e-12 * (1.0 + good as f64));
            // Every touched sub-map holds an unflagged sample, and every unflagged sample's
            // sub-map is touched.
            let mut expect: Vec<usize> = pixels
                .iter()
                .zip(&flags)
                .filter(|(_, f)| **f == 0)
                .map(|(&p, _)| layout.split(p).0)
                .collect();
            expect.sort_unstable();
            expect.dedup();
            prop_assert_eq!(whole.map().touched_submaps(), expect);
        }
    }
}

/// A miniature of the demo's weak cross-linking: five observations, each one orthogonal
/// detector pair scanning every line of the grid twice ("two rotations"), the lines sheared a
/// little more from one observation to the next so that they cross at shallow angles, and the
/// pair's angle fixed within an observation (each observation alone sees only I and one
/// combination of Q and U). Offsets drift (random walk) on top of white noise. With one
/// coarse template per detector and observation, split into segments (some of them exact null
/// modes here, dropped from the coarse space), the destriper reaches 1e-10 within 100
/// iterations, and its baselines are the
/// truth within their statistical error (χ²). (This toy lacks the demo's slow modes: every
/// preconditioner needs 80–120 iterations on it; the demo's figures are in
/// docs/benchmarks.md and tests/mapmake.rs.)
#[test]
fn weakly_cross_linked_pairs_converge_with_per_detector_templates() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let (g, l, nobs) = (16, 4, 5);
    let sigma = 0.2;
    let (mut pixels, mut weights, mut groups) = (vec![], vec![], vec![]);
    for o in 0..nobs {
        let psi = o as f64 * std::f64::consts::PI / nobs as f64;
        for pair in 0..2 {
            let (mut pix, mut wts) = (vec![], vec![]);
            for _rotation in 0..2 {
                for line in 0..g {
                    for x in 0..g {
                        let row = (line + o * x / (2 * g / nobs).max(1) / 2) % g;
                        pix.push((100 + row * g + x) as u64);
                        let angle = psi
                            + pair as f64 * std::f64::consts::FRAC_PI_2
                            + 0.6 * (x as f64 / g as f64 * std::f64::consts::TAU).sin();
                        wts.push(stokes_weights_from_psi(angle, 0.95));
                    }
                }
            }
            pixels.push(pix);
            weights.push(wts);
            groups.push(o);
        }
    }
    let scan = Scan { pixels, weights };
    let sky = random_sky(&mut rng, NPIX);
    let mut signal = signal_of(&scan, &sky);
    let mut truth = vec![];
    for s in signal.iter_mut() {
        let mut walk = 0.0;
        let offs: Vec<f64> = (0..s.len().div_ceil(l))
            .map(|_| {
                walk += 0.5 * gauss(&mut rng);
                walk
            })
            .collect();
        for (i, x) in s.iter_mut().enumerate() {
            *x += offs[i / l] + sigma * gauss(&mut rng);
        }
        truth.push(offs);
    }
    let inv_var = 1.0 / (sigma * sigma);
    let mut ts = timestreams(&scan, &signal, inv_var);
    for (t, &g) in ts.iter_mut().zip(&groups) {
        t.group = g;
    }
    let layout = SubmapLayout::new(NPIX, 64).unwrap();
    let per_obs = DestripeConfig {
        baseline_length: l,
        tolerance: 1e-10,
        max_iterations: 1000,
        coarse_groups: nobs,
        block_baselines: 1024,
        ..DestripeConfig::default()
    };
    let per_det = DestripeConfig {
        coarse_detectors: 2,
        coarse_segments: 2,
        ..per_obs
    };
    let a = destripe(&ts, layout, Components::Iqu, &per_obs, &mut SingleProcess).unwrap();
    let out = destripe(&ts, layout, Components::Iqu, &per_det, &mut SingleProcess).unwrap();
    eprintln!(
        "weakly cross-linked pairs: per-observation templates {} iterations, per-detector {} \
         ({} templates)",
        a.iterations, out.iterations, out.coarse_dimension
    );
    // Templates that depend on others (exact null modes of this geometry) are dropped, the
    // rest kept.
    assert!(out.coarse_dimension > nobs && out.coarse_dimension <= nobs * 2 * 2);
    assert!(a.converged && out.converged && out.residual <= 1e-10);
    assert!(out.iterations <= 100, "{} iterations", out.iterations);
    // Two timestreams per group do not fit one template slot per group.
    let too_few = DestripeConfig {
        coarse_detectors: 1,
        ..per_det
    };
    assert!(matches!(
        destripe(&ts, layout, Components::Iqu, &too_few, &mut SingleProcess),
        Err(DestripeError::GroupSize {
            detector: 1,
            group: 0,
            detectors: 1
        })
    ));
    // Baselines against the truth: eᵀ A e follows χ² with n − 1 degrees of freedom (see
    // offsets_with_white_noise_are_recovered_within_their_error), samples in cut pixels left
    // out as the destriper leaves them out.
    let n: usize = truth.iter().map(Vec::len).sum();
    let mean: f64 = truth.iter().flatten().sum::<f64>() / n as f64;
    let fe: Vec<Vec<f64>> = out
        .baselines
        .iter()
        .zip(&truth)
        .zip(&scan.pixels)
        .map(|((av, tv), p)| {
            (0..p.len())
                .map(|i| av[i / l] - (tv[i / l] - mean))
                .collect()
        })
        .collect();
    let mut acc = BinAccumulator::new(layout, Components::Iqu);
    for (d, y) in fe.iter().enumerate() {
        acc.accumulate(&scan.pixels[d], &scan.weights[d], y, None, inv_var)
            .unwrap();
    }
    let m = acc.solve(1e-3);
    let mut chi2 = 0.0;
    for (d, y) in fe.iter().enumerate() {
        for (i, &p) in scan.pixels[d].iter().enumerate() {
            if let Some(v) = m.value(p) {
                let r = y[i] - scan_px(scan.weights[d][i], v);
                chi2 += r * r * inv_var;
            }
        }
    }
    let dof = (n - 1) as f64;
    eprintln!("weakly cross-linked pairs: χ² = {chi2:.1} for {dof} degrees of freedom");
    assert!(
        (chi2 - dof).abs() < 5.0 * (2.0 * dof).sqrt(),
        "χ² = {chi2} for {dof} degrees of freedom"
    );
}
