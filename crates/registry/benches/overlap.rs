//! Overlap query time against a registry of 100,000 CCDs.
//!
//! The table is a simulated survey built once: 1,000 visits of a 10 × 10 camera of
//! 0.1° × 0.2° CCDs, dithered and rotated over a 20° × 20° field straddling RA = 0 (about six
//! visits deep). Queries are patch-sized (0.2° squares, as an HSC patch) and tract-sized
//! (1.7°), cycling through 1,024 random positions in the field. `brute_force` is the exact test
//! over every CCD held in memory — the no-index baseline.
//!
//! Run: `cargo bench -p skypipe-registry --bench overlap`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use skypipe_registry::{ConvexPolygon, Registry, SkyPoint};

const VISITS: u64 = 1_000;
const FIELD: f64 = 20.0;

fn queries(rng: &mut ChaCha8Rng, side: f64) -> Vec<ConvexPolygon> {
    (0..1024)
        .map(|_| {
            let half = FIELD / 2.0 - 1.0;
            let c = SkyPoint::new(rng.random_range(-half..half), rng.random_range(-half..half))
                .unwrap();
            ConvexPolygon::new(&common::rectangle(c, side, side, 0.0)).unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let records = common::survey(&mut rng, VISITS, 10, 10, FIELD);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.sqlite3");
    let mut reg = Registry::open(&path).unwrap();
    let t = Instant::now();
    for batch in records.chunks(10_000) {
        reg.insert_ccds(batch).unwrap();
    }
    let rows = reg.count().unwrap();
    eprintln!(
        "built {rows} rows in {:.2} s ({:.1} µs per row, batches of 10,000)",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e6 / rows as f64
    );
    assert!(rows >= 100_000);
    let polygons: Vec<ConvexPolygon> = records.iter().map(|r| r.region().unwrap()).collect();

    for (name, side) in [("patch_0.2deg", 0.2), ("tract_1.7deg", 1.7)] {
        let qs = queries(&mut rng, side);
        let hits: usize = qs.iter().map(|q| reg.overlapping(q).unwrap().len()).sum();
        eprintln!(
            "{name}: {:.1} CCDs per query on average",
            hits as f64 / qs.len() as f64
        );
        let mut i = 0;
        c.bench_function(&format!("overlap/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % qs.len();
                black_box(reg.overlapping(black_box(&qs[i])).unwrap())
            })
        });
    }

    let qs = queries(&mut rng, 0.2);
    let mut group = c.benchmark_group("brute_force");
    group.sample_size(20);
    let mut i = 0;
    group.bench_function("patch_0.2deg", |b| {
        b.iter(|| {
            i = (i + 1) % qs.len();
            let q = &qs[i];
            black_box(polygons.iter().filter(|p| p.intersects(q)).count())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
