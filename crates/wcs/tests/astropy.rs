//! skypipe's WCS (WCSLIB) against astropy (`/usr/bin/python3`, Debian python3-astropy) on
//! headers of every accepted form: CD, PC+CDELT, CROTA2, TAN-SIP with A/B and with A/B and
//! AP/BP (written by astropy, `-SIP` suffix asserted), and TPV (PV cards by hand; also checked
//! against the TPV polynomial evaluated by formula here). Both directions agree to 1e-3″ on a
//! grid of pixels over a 2048 × 4096 CCD.

use serde_json::Value;
use skypipe_wcs::Wcs;
use std::process::Command;

const TOLERANCE_ARCSEC: f64 = 1e-3;

fn astropy() -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/astropy_headers.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .output()
        .expect("/usr/bin/python3 is missing: run scripts/install-deps.sh test");
    assert!(
        out.status.success(),
        "astropy script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("astropy script prints JSON")
}

fn points(v: &Value) -> Vec<[f64; 2]> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
        .collect()
}

/// Angular separation in arcsec (haversine).
fn separation_arcsec(a: [f64; 2], b: [f64; 2]) -> f64 {
    let (ra1, d1, ra2, d2) = (
        a[0].to_radians(),
        a[1].to_radians(),
        b[0].to_radians(),
        b[1].to_radians(),
    );
    let h =
        ((d2 - d1) / 2.0).sin().powi(2) + d1.cos() * d2.cos() * ((ra2 - ra1) / 2.0).sin().powi(2);
    (2.0 * h.sqrt().asin()).to_degrees() * 3600.0
}

fn header_text(case: &Value) -> String {
    case["header"].as_str().unwrap().to_string()
}

#[test]
fn every_header_form_agrees_with_astropy_both_ways() {
    let all = astropy();
    let names = ["cd", "pc_cdelt", "crota2", "sip_ab", "sip_ab_apbp", "tpv"];
    for name in names {
        let case = &all[name];
        let wcs = Wcs::from_header(name, &header_text(case)).unwrap();
        let scale = case["scale"].as_f64().unwrap();
        let (pixels, sky) = (points(&case["pixels"]), points(&case["sky"]));
        let ours = wcs.pixel_to_sky(&pixels).unwrap();
        let worst = ours
            .iter()
            .zip(&sky)
            .map(|(o, s)| separation_arcsec(o.expect("every pixel has a sky position"), *s))
            .fold(0.0, f64::max);
        assert!(worst < TOLERANCE_ARCSEC, "{name}: pixel→sky worst {worst}″");
        let (sky_in, pix_out) = (points(&case["sky_in"]), points(&case["pixels_out"]));
        let ours = wcs.sky_to_pixel(&sky_in).unwrap();
        let worst = ours
            .iter()
            .zip(&pix_out)
            .map(|(o, p)| {
                let o = o.expect("every sky position has a pixel");
                (o[0] - p[0]).hypot(o[1] - p[1]) * scale
            })
            .fold(0.0, f64::max);
        assert!(worst < TOLERANCE_ARCSEC, "{name}: sky→pixel worst {worst}″");
        // The header WCSLIB writes back reads to the same transform.
        let again = Wcs::from_header(name, &wcs.to_records().unwrap().concat()).unwrap();
        let back = again.pixel_to_sky(&pixels).unwrap();
        let worst = back
            .iter()
            .zip(&sky)
            .map(|(o, s)| separation_arcsec(o.unwrap(), *s))
            .fold(0.0, f64::max);
        assert!(
            worst < TOLERANCE_ARCSEC,
            "{name}: rewritten header worst {worst}″"
        );
    }
}

#[test]
fn sip_is_applied_not_ignored() {
    // Dropping the SIP keywords and the suffix moves the corners by more than an arcsecond:
    // agreement above therefore means the polynomials were applied.
    let all = astropy();
    for name in ["sip_ab", "sip_ab_apbp"] {
        let case = &all[name];
        let text = header_text(case);
        let plain: String = text
            .as_bytes()
            .chunks(80)
            .map(|r| String::from_utf8(r.to_vec()).unwrap())
            .filter(|r| {
                let key = r[..8].trim_end();
                !["A_", "B_", "AP_", "BP_"]
                    .iter()
                    .any(|p| key.starts_with(p))
            })
            .map(|r| r.replace("-TAN-SIP'", "-TAN'    "))
            .collect();
        let with = Wcs::from_header(name, &text).unwrap();
        let without = Wcs::from_header(name, &plain).unwrap();
        assert_eq!(with.ctypes(), ["RA---TAN-SIP", "DEC--TAN-SIP"]);
        assert_eq!(without.ctypes(), ["RA---TAN", "DEC--TAN"]);
        let corner = [[1.0, 1.0]];
        let a = with.pixel_to_sky(&corner).unwrap()[0].unwrap();
        let b = without.pixel_to_sky(&corner).unwrap()[0].unwrap();
        assert!(
            separation_arcsec(a, b) > 1.0,
            "{name}: SIP moved the corner only {}″",
            separation_arcsec(a, b)
        );
    }
}

/// Pixel → sky of a TPV header by formula: CD to intermediate (x, y) in degrees, the TPV
/// polynomials ξ = Σ PV1_k T_k(x, y), η = Σ PV2_k T_k(y, x) (terms to third order, with
/// r = √(x² + y²)), then the gnomonic deprojection about CRVAL.
fn tpv_formula(
    pv: &dyn Fn(u32, u32) -> f64,
    crpix: [f64; 2],
    crval: [f64; 2],
    cd: [[f64; 2]; 2],
    p: [f64; 2],
) -> [f64; 2] {
    let (dx, dy) = (p[0] - crpix[0], p[1] - crpix[1]);
    let x = cd[0][0] * dx + cd[0][1] * dy;
    let y = cd[1][0] * dx + cd[1][1] * dy;
    let terms = |u: f64, v: f64| {
        let r = u.hypot(v);
        [
            1.0,
            u,
            v,
            r,
            u * u,
            u * v,
            v * v,
            u * u * u,
            u * u * v,
            u * v * v,
            v * v * v,
            r * r * r,
        ]
    };
    let xi: f64 = terms(x, y)
        .iter()
        .enumerate()
        .map(|(k, t)| pv(1, k as u32) * t)
        .sum();
    let eta: f64 = terms(y, x)
        .iter()
        .enumerate()
        .map(|(k, t)| pv(2, k as u32) * t)
        .sum();
    let (xi, eta) = (xi.to_radians(), eta.to_radians());
    let (a0, d0) = (crval[0].to_radians(), crval[1].to_radians());
    let denom = d0.cos() - eta * d0.sin();
    let ra = a0 + xi.atan2(denom);
    let dec = (d0.sin() + eta * d0.cos()).atan2(xi.hypot(denom));
    [ra.to_degrees().rem_euclid(360.0), dec.to_degrees()]
}

#[test]
fn tpv_matches_its_polynomial_by_formula() {
    let all = astropy();
    let case = &all["tpv"];
    let coef = &all["tpv_coefficients"];
    let pv = |i: u32, k: u32| coef[format!("PV{i}_{k}")].as_f64().unwrap_or(0.0);
    let wcs = Wcs::from_header("tpv", &header_text(case)).unwrap();
    // WCSLIB holds TPV as TAN with a distortion (its CTYPE reads 'RA---TAN').
    let s = 0.2 / 3600.0;
    let (crpix, crval, cd) = ([1024.5, 2048.5], [359.98, -30.0], [[-s, 1e-7], [2e-7, s]]);
    let pixels = points(&case["pixels"]);
    let ours = wcs.pixel_to_sky(&pixels).unwrap();
    let mut worst: f64 = 0.0;
    let mut distortion: f64 = 0.0;
    for (p, o) in pixels.iter().zip(&ours) {
        let f = tpv_formula(&pv, crpix, crval, cd, *p);
        let identity = |i: u32, k: u32| f64::from(u8::from(k == 1 && i >= 1));
        let t = tpv_formula(&identity, crpix, crval, cd, *p);
        worst = worst.max(separation_arcsec(o.unwrap(), f));
        distortion = distortion.max(separation_arcsec(f, t));
    }
    assert!(
        worst < TOLERANCE_ARCSEC,
        "TPV: WCSLIB vs formula worst {worst}″"
    );
    assert!(
        distortion > 1.0,
        "the test's TPV terms are too small to matter ({distortion}″)"
    );
}
