//! Binned accumulation speed (noise-weighted I/Q/U right-hand side, 3×3 matrix, hits) at
//! nside 2048 on a satellite-like scan in NESTED order, ns per sample.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use skypipe_core::binning::{BinAccumulator, Components, SubmapLayout};
use skypipe_core::healpix::{Healpix, Ordering};
use skypipe_core::pointing::stokes_weights_from_psi;

/// Circles of 85° opening angle at 1 rpm sampled at 180 Hz, the spin axis moving along the
/// ecliptic by 1° per 360 circles.
fn scan(n: usize, grid: &Healpix) -> Vec<u64> {
    let open = 85f64.to_radians();
    (0..n)
        .map(|i| {
            let t = i as f64 / 180.0;
            let spin = std::f64::consts::TAU * t / 60.0;
            let lon = (t / 60.0 / 360.0).to_radians();
            let axis = [lon.cos(), lon.sin(), 0.0];
            let (u, v) = ([-lon.sin(), lon.cos(), 0.0], [0.0, 0.0, 1.0]);
            let d: Vec<f64> = (0..3)
                .map(|k| {
                    open.cos() * axis[k] + open.sin() * (spin.cos() * u[k] + spin.sin() * v[k])
                })
                .collect();
            grid.vec2pix([d[0], d[1], d[2]]).expect("unit vector")
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let nside = 2048u64;
    let grid = Healpix::new(nside, Ordering::Nested).expect("valid nside");
    let n = 1_000_000;
    let pixels = scan(n, &grid);
    let weights: Vec<[f64; 3]> = (0..n)
        .map(|i| stokes_weights_from_psi(0.01 * i as f64, 0.9))
        .collect();
    let signal: Vec<f64> = (0..n).map(|i| ((i as f64) * 0.37).sin()).collect();
    let mut group = c.benchmark_group("binning_nside2048");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    for (name, comps) in [("iqu", Components::Iqu), ("i", Components::I)] {
        let layout = SubmapLayout::new(12 * nside * nside, 1 << 14).expect("valid layout");
        let mut acc = BinAccumulator::new(layout, comps);
        group.bench_function(name, |b| {
            b.iter(|| {
                acc.accumulate(&pixels, &weights, &signal, None, 1.0)
                    .expect("valid chunk")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
