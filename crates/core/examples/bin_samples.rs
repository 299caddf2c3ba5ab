//! Times [`BinAccumulator::accumulate`] (noise-weighted I/Q/U right-hand side, the 6 unique
//! terms of the 3×3 matrix and hits) on timestreams stored on disk, so the same samples can be
//! binned by TOAST and numpy for a side-by-side comparison (`benches/mapmake_binning.sh`).
//!
//! ```text
//! cargo run --release -p skypipe-core --example bin_samples -- DIR [REPEATS]
//! ```
//!
//! `DIR` holds what `benches/mapmake_binning/gen_data.py` writes, all little-endian:
//! - `meta.txt`: `key value` lines with `nside`, `ndet`, `nsamp`, `submap_size`;
//! - `pixels.u64`: NESTED pixels, `ndet × nsamp`;
//! - `weights.f64`: Stokes weights, `ndet × nsamp × 3` (I, Q, U);
//! - `signal.f64`: timestreams, `ndet × nsamp`;
//! - `detweights.f64`: noise weight `1/σ²` per detector, `ndet`.
//!
//! Each detector is one `accumulate` call. Two timings, each the median of `REPEATS` (default 3)
//! after one warm-up pass:
//! - `warm`: the accumulator keeps its sub-maps and is zeroed between repeats (like TOAST's
//!   preallocated buffers);
//! - `cold`: a new accumulator per repeat, so first-touch allocation of sub-maps is included.
//!
//! Results go to standard output as `key=value` lines (ns per sample, sub-map counts, memory),
//! and the accumulated records of the touched sub-maps to `DIR/ours_submaps.u64` (sorted
//! sub-map indices) and `DIR/ours_records.f64` (for each of those sub-maps, `submap_size`
//! records of `[hits, C_II, C_IQ, C_IU, C_QQ, C_QU, C_UU, b_I, b_Q, b_U]`), which
//! `benches/mapmake_binning/compare.py` checks against TOAST's and numpy's sums.

use std::collections::HashMap;
use std::error::Error;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use skypipe_core::binning::{BinAccumulator, Components, SubmapLayout};

/// The benchmark inputs, detector-major.
struct Samples {
    nside: u64,
    ndet: usize,
    nsamp: usize,
    submap_size: u64,
    pixels: Vec<u64>,
    weights: Vec<[f64; 3]>,
    signal: Vec<f64>,
    detweights: Vec<f64>,
}

/// Read a whole file of little-endian 8-byte words, checking the expected count.
fn read_words(path: &Path, expected: usize) -> Result<Vec<[u8; 8]>, Box<dyn Error>> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() != expected * 8 {
        return Err(format!(
            "{}: {} bytes, expected {} ({} values)",
            path.display(),
            bytes.len(),
            expected * 8,
            expected
        )
        .into());
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| c.try_into().expect("chunk of 8 bytes"))
        .collect())
}

fn read_f64(path: &Path, expected: usize) -> Result<Vec<f64>, Box<dyn Error>> {
    Ok(read_words(path, expected)?
        .into_iter()
        .map(f64::from_le_bytes)
        .collect())
}

impl Samples {
    /// Read and validate the files of `dir`.
    fn read(dir: &Path) -> Result<Self, Box<dyn Error>> {
        let meta_path = dir.join("meta.txt");
        let meta_text =
            fs::read_to_string(&meta_path).map_err(|e| format!("{}: {e}", meta_path.display()))?;
        let meta: HashMap<&str, u64> = meta_text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.trim(), v)))
            .collect();
        let get = |k: &str| {
            meta.get(k)
                .copied()
                .ok_or_else(|| format!("{}: no `{k}`", meta_path.display()))
        };
        let (nside, ndet, nsamp, submap_size) = (
            get("nside")?,
            get("ndet")? as usize,
            get("nsamp")? as usize,
            get("submap_size")?,
        );
        let n = ndet * nsamp;
        let pixels: Vec<u64> = read_words(&dir.join("pixels.u64"), n)?
            .into_iter()
            .map(u64::from_le_bytes)
            .collect();
        let flat = read_f64(&dir.join("weights.f64"), 3 * n)?;
        let weights = flat.chunks_exact(3).map(|w| [w[0], w[1], w[2]]).collect();
        let signal = read_f64(&dir.join("signal.f64"), n)?;
        let detweights = read_f64(&dir.join("detweights.f64"), ndet)?;
        Ok(Self {
            nside,
            ndet,
            nsamp,
            submap_size,
            pixels,
            weights,
            signal,
            detweights,
        })
    }

    /// Bin every detector into `acc`, one `accumulate` call per detector.
    fn bin_into(&self, acc: &mut BinAccumulator) -> Result<u64, Box<dyn Error>> {
        let mut used = 0;
        for d in 0..self.ndet {
            let r = d * self.nsamp..(d + 1) * self.nsamp;
            used += acc.accumulate(
                &self.pixels[r.clone()],
                &self.weights[r.clone()],
                &self.signal[r],
                None,
                self.detweights[d],
            )?;
        }
        Ok(used)
    }
}

/// Median of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// Write the touched sub-maps (sorted) and their records for the comparison script.
fn write_records(dir: &Path, acc: &BinAccumulator) -> Result<(), Box<dyn Error>> {
    let map = acc.map();
    let submaps = map.touched_submaps();
    let mut f = BufWriter::new(fs::File::create(dir.join("ours_submaps.u64"))?);
    for &sm in &submaps {
        f.write_all(&(sm as u64).to_le_bytes())?;
    }
    f.flush()?;
    let mut f = BufWriter::new(fs::File::create(dir.join("ours_records.f64"))?);
    for &sm in &submaps {
        for v in map.block(sm).expect("touched sub-map is allocated") {
            f.write_all(&v.to_le_bytes())?;
        }
    }
    f.flush()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: bin_samples DIR [REPEATS]  (DIR from gen_data.py)")?,
    );
    let repeats: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    if repeats == 0 {
        return Err("REPEATS must be at least 1".into());
    }
    let data = Samples::read(&dir)?;
    let n = (data.ndet * data.nsamp) as f64;
    let npix = 12 * data.nside * data.nside;
    let layout = SubmapLayout::new(npix, data.submap_size)?;

    // Warm-up, which also fixes the sub-maps the warm runs keep.
    let mut acc = BinAccumulator::new(layout, Components::Iqu);
    let used = data.bin_into(&mut acc)?;
    if used as f64 != n || acc.total_hits() != n {
        return Err(format!(
            "binned {used} samples, {} hits, expected {n}",
            acc.total_hits()
        )
        .into());
    }

    let mut warm = Vec::with_capacity(repeats);
    let mut cold = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        acc.map_mut().clear_values();
        let t = Instant::now();
        data.bin_into(&mut acc)?;
        warm.push(t.elapsed().as_secs_f64() * 1e9 / n);

        let t = Instant::now();
        let mut fresh = BinAccumulator::new(layout, Components::Iqu);
        data.bin_into(&mut fresh)?;
        cold.push(t.elapsed().as_secs_f64() * 1e9 / n);
        drop(fresh);
    }

    let map = acc.map();
    let bytes_per_pixel = (Components::Iqu.stride() * 8) as u64;
    let sparse_bytes = (map.n_touched() * map.block_len() * 8) as u64;
    let index_bytes = (layout.n_submaps() * 4) as u64;
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!("samples={}", data.ndet * data.nsamp);
    println!("ndet={}", data.ndet);
    println!("nside={}", data.nside);
    println!("submap_size={}", data.submap_size);
    println!("warm_ns_per_sample={:.3}", median(warm.clone()));
    println!("warm_ns_runs={}", fmt(&warm));
    println!("cold_ns_per_sample={:.3}", median(cold.clone()));
    println!("cold_ns_runs={}", fmt(&cold));
    println!("n_submaps={}", layout.n_submaps());
    println!("n_touched={}", map.n_touched());
    println!("block_len={}", map.block_len());
    println!("sparse_bytes={sparse_bytes}");
    println!("sparse_index_bytes={index_bytes}");
    for nside in [1024u64, 2048] {
        println!(
            "dense_bytes_nside{nside}={}",
            12 * nside * nside * bytes_per_pixel
        );
    }
    println!("total_hits={}", acc.total_hits());
    write_records(&dir, &acc)?;
    Ok(())
}
