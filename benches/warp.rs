//! Benchmark driver for the Lanczos3 warp (run by `benches/warp_swarp.sh`, not on its own).
//!
//! `warp SOURCE.f32 WIDTH HEIGHT SOURCE.hdr TARGET.hdr TWIDTH THEIGHT STEP OUT.f32`
//!
//! Reads a little-endian `f32` source image and two FITS headers (80-character records
//! concatenated), maps every node of a `STEP`-pixel coarse grid of the target through the two
//! WCSs (WCSLIB: target pixel → sky → source pixel), warps image, variance (1) and mask (0)
//! single-threaded with flux scaling `Fixed`, writes the warped image as `f32`, and prints
//! `kernel_cpu_s`, `map_cpu_s` and the coarse-grid interpolation error in source pixels.

use skypipe_core::warp::{CoarseMap, Source, WarpParams, warp};
use skypipe_wcs::Wcs;
use std::time::Instant;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [src, w, h, src_hdr, tgt_hdr, tw, th, step, out] = args.as_slice() else {
        return Err(
            "usage: warp SOURCE.f32 WIDTH HEIGHT SOURCE.hdr TARGET.hdr TWIDTH THEIGHT STEP OUT.f32"
                .into(),
        );
    };
    let (w, h, tw, th, step): (usize, usize, usize, usize, usize) = (
        w.parse()?,
        h.parse()?,
        tw.parse()?,
        th.parse()?,
        step.parse()?,
    );
    let image: Vec<f32> = std::fs::read(src)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if image.len() != w * h {
        return Err(format!("{src}: {} values for {w} × {h}", image.len()).into());
    }
    let source_wcs = Wcs::from_header(src_hdr, &std::fs::read_to_string(src_hdr)?)?;
    let target_wcs = Wcs::from_header(tgt_hdr, &std::fs::read_to_string(tgt_hdr)?)?;
    // 0-based target pixel → 1-based FITS pixel → sky → 1-based source pixel → 0-based.
    let exact = |points: &[[f64; 2]]| -> Vec<[f64; 2]> {
        let fits: Vec<[f64; 2]> = points.iter().map(|p| [p[0] + 1.0, p[1] + 1.0]).collect();
        let sky = target_wcs.pixel_to_sky(&fits).expect("target WCS");
        let sky: Vec<[f64; 2]> = sky.iter().map(|s| s.unwrap_or([f64::NAN; 2])).collect();
        let pix = source_wcs.sky_to_pixel(&sky).expect("source WCS");
        pix.iter()
            .map(|p| p.map_or([f64::NAN; 2], |p| [p[0] - 1.0, p[1] - 1.0]))
            .collect()
    };
    let (variance, mask) = (vec![1f32; w * h], vec![0u32; w * h]);
    let source = Source {
        image: &image,
        variance: &variance,
        mask: &mask,
        width: w,
        height: h,
    };

    let c0 = cpu_seconds();
    let map = CoarseMap::new(tw, th, step, exact)?;
    let c1 = cpu_seconds();
    let wall = Instant::now();
    let warped = warp(&source, &map, &WarpParams::default())?;
    let c2 = cpu_seconds();
    let kernel_wall = wall.elapsed().as_secs_f64();
    let error = map.max_interpolation_error(&map.probe_points(7), exact)?;

    let bytes: Vec<u8> = warped.image.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out, bytes)?;
    println!(
        "map_cpu_s {:.4} kernel_cpu_s {:.4} kernel_wall_s {:.4} interp_error_px {:.3e} area_ratio {:.6}",
        c1 - c0,
        c2 - c1,
        kernel_wall,
        error,
        map.fixed_area_ratio()
    );
    Ok(())
}
