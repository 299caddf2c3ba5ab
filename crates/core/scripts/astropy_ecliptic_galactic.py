#!/usr/bin/python3
"""Reference values for skypipe-core's ecliptic -> galactic rotation (src/frames.rs tests).

Run with Debian's /usr/bin/python3 (python3-astropy). Prints Rust array literals:
ecliptic (lon, lat) in degrees -> galactic (l, b) in degrees, BarycentricMeanEcliptic (J2000
mean equinox) -> Galactic, plus the Planck 2018 solar dipole direction galactic -> ecliptic.
"""
import astropy
import astropy.units as u
from astropy.coordinates import BarycentricMeanEcliptic, Galactic, SkyCoord

print(f"// astropy {astropy.__version__}")
points = [(0.0, 0.0), (90.0, 0.0), (180.0, 30.0), (270.0, -60.0), (45.0, 89.0),
          (123.4, -12.3), (0.0, 90.0), (0.0, -90.0), (300.0, 10.0), (200.0, -45.0)]
print("const ECL_TO_GAL: [((f64, f64), (f64, f64)); %d] = [" % len(points))
for lon, lat in points:
    c = SkyCoord(lon * u.deg, lat * u.deg, frame=BarycentricMeanEcliptic())
    g = c.transform_to(Galactic())
    print(f"    (({lon:.1f}, {lat:.1f}), ({g.l.deg:.12f}, {g.b.deg:.12f})),")
print("];")
g = SkyCoord(264.021 * u.deg, 48.253 * u.deg, frame=Galactic())
e = g.transform_to(BarycentricMeanEcliptic())
print(f"const DIPOLE_ECL: (f64, f64) = ({e.lon.deg:.12f}, {e.lat.deg:.12f});")
