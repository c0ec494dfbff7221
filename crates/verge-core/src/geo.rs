//! Geography: points on the earth and great-circle distance.

use serde::{Deserialize, Serialize};

use crate::error::{check_range, ValidationError};

/// Mean earth radius in kilometres (IUGG).
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point given by latitude and longitude in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoPoint {
    /// Latitude in degrees, -90 to 90.
    pub latitude: f64,
    /// Longitude in degrees, -180 to 180.
    pub longitude: f64,
}

impl GeoPoint {
    /// Checks the coordinates are on the globe; `field` prefixes the error path.
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        check_range(&format!("{field}.latitude"), self.latitude, -90.0, 90.0)?;
        check_range(&format!("{field}.longitude"), self.longitude, -180.0, 180.0)
    }
}

/// Great-circle distance between two points in kilometres (haversine formula).
pub fn haversine_km(a: GeoPoint, b: GeoPoint) -> f64 {
    let (la1, la2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.longitude - a.longitude).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_york_to_frankfurt_is_about_6200_km() {
        let ny = GeoPoint { latitude: 40.7128, longitude: -74.0060 };
        let fra = GeoPoint { latitude: 50.1109, longitude: 8.6821 };
        let d = haversine_km(ny, fra);
        assert!((6150.0..6250.0).contains(&d), "{d}");
        assert_eq!(haversine_km(ny, ny), 0.0);
    }

    #[test]
    fn off_the_globe_is_refused() {
        let p = GeoPoint { latitude: 91.0, longitude: 0.0 };
        assert_eq!(p.validate("loc").unwrap_err().field, "loc.latitude");
    }
}
