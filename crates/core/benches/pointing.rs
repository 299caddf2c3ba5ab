//! Pointing per detector-sample on one core, nside 2048 (issue 4 goal: ≤ 55 ns; the TOAST
//! chain measured here is ~163 ns). Criterion reports throughput in samples/s; ns/sample is
//! 1e9 / that, and the `time` line divided by `SAMPLES`.
//!
//! Run: `cargo bench -p skypipe-core --bench pointing`.
//!
//! Inputs: a Planck-like scan (1 rpm spin about an axis in the ecliptic plane, boresight 85°
//! from it) with 8 Hz attitude, one detector 1° off the boresight, sampled at 180.37 Hz.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use skypipe_core::aberration::Beta;
use skypipe_core::attitude::{Attitude, SampleClock};
use skypipe_core::healpix::{Healpix, Ordering};
use skypipe_core::pointing::{
    Corrections, Detector, PointingKernel, PointingOutput, cos_sin_2psi, los_and_orientation,
    stokes_weights,
};
use skypipe_core::{frames, quat};
use std::hint::black_box;

const SAMPLES: usize = 100_000; // ≈ 9.2 minutes of one detector

fn scan() -> (Attitude, SampleClock, Detector) {
    let spin = std::f64::consts::TAU / 60.0;
    let tilt = quat::from_axis_angle([0.0, 1.0, 0.0], 85f64.to_radians()).unwrap();
    let times: Vec<f64> = (0..=8 * 600).map(|i| i as f64 / 8.0).collect();
    let quats: Vec<quat::Quat> = times
        .iter()
        .map(|&t| {
            // Spin axis drifting 1°/day along the ecliptic.
            let drift = quat::from_axis_angle([0.0, 0.0, 1.0], (t / 86400.0).to_radians()).unwrap();
            let spin_q = quat::from_axis_angle([1.0, 0.0, 0.0], spin * t).unwrap();
            quat::mul(drift, quat::mul(spin_q, tilt))
        })
        .collect();
    let attitude = Attitude::new(&times, &quats).unwrap();
    let clock = SampleClock::new(0.0, 180.37).unwrap();
    let offset = quat::mul(
        quat::from_axis_angle([0.0, 1.0, 0.0], 1f64.to_radians()).unwrap(),
        quat::from_axis_angle([0.0, 0.0, 1.0], 0.3).unwrap(),
    );
    let det = Detector {
        offset,
        pol_efficiency: 0.95,
    };
    (attitude, clock, det)
}

fn bench(c: &mut Criterion) {
    let (attitude, clock, det) = scan();
    let mut pixels = vec![0u64; SAMPLES];
    let mut weights = vec![[0.0f64; 3]; SAMPLES];
    let mut quats = vec![[0.0f64; 4]; SAMPLES];
    let mut group = c.benchmark_group("pointing_nside2048");
    group.throughput(Throughput::Elements(SAMPLES as u64));

    let cases = [
        ("fused_ring", Ordering::Ring, Corrections::default()),
        ("fused_nested", Ordering::Nested, Corrections::default()),
        (
            "fused_ring_aberration_galactic",
            Ordering::Ring,
            Corrections {
                aberration: Some(Beta::from_km_s([5.0, -29.0, 0.3]).unwrap()),
                frame: Some(frames::ecliptic_to_galactic()),
            },
        ),
    ];
    for (name, ordering, corr) in cases {
        let kernel =
            PointingKernel::new(&det, &corr, Healpix::new(2048, ordering).unwrap()).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                kernel
                    .run(
                        &attitude,
                        &clock,
                        black_box(1000),
                        PointingOutput {
                            pixels: &mut pixels,
                            weights: &mut weights,
                            quats: None,
                        },
                    )
                    .unwrap();
                black_box(&pixels);
            })
        });
    }

    // The same chain, unfused, as separate passes over arrays (like a chain of compiled kernels).
    let grid = Healpix::new(2048, Ordering::Ring).unwrap();
    group.bench_function("unfused_ring_reference", |b| {
        b.iter(|| {
            attitude
                .interpolate(&clock, black_box(1000), &mut quats)
                .unwrap();
            for q in quats.iter_mut() {
                *q = quat::mul(*q, det.offset);
            }
            for (q, p) in quats.iter().zip(pixels.iter_mut()) {
                *p = grid.vec2pix(quat::rotate(*q, [0.0, 0.0, 1.0])).unwrap();
            }
            for (q, w) in quats.iter().zip(weights.iter_mut()) {
                let (d, o) = los_and_orientation(*q);
                let (c2, s2) = cos_sin_2psi(d, o);
                *w = stokes_weights(c2, s2, det.pol_efficiency);
            }
            black_box(&weights);
        })
    });

    // Parts, for the breakdown.
    group.bench_function("part_slerp_only", |b| {
        b.iter(|| {
            attitude
                .interpolate(&clock, black_box(1000), &mut quats)
                .unwrap();
            black_box(&quats);
        })
    });
    let dirs: Vec<[f64; 3]> = quats
        .iter()
        .map(|q| quat::rotate(*q, [0.0, 0.0, 1.0]))
        .collect();
    group.bench_function("part_vec2pix_ring_only", |b| {
        b.iter(|| {
            grid.vec2pix_batch(black_box(&dirs), &mut pixels).unwrap();
            black_box(&pixels);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
