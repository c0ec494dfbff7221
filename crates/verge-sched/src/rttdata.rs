//! Parsers for the measured city-to-city round-trip times in
//! `../shared/data/rtt/` (WonderNetwork, 2018): `cities.csv` and
//! `city-rtt-ms.csv`. They turn text into typed values and report malformed
//! input as an [`RttDataError`] with its line number.
//!
//! This module never opens a file and never panics on its input: callers read
//! the text, these functions only parse it.

use std::collections::HashMap;

use thiserror::Error;

/// The header `cities.csv` must start with.
const CITIES_HEADER: [&str; 4] = ["City", "Lat", "Long", "Population"];

/// Why a city or RTT file could not be parsed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RttDataError {
    /// The text holds no header line.
    #[error("the file is empty; expected a header line")]
    Empty,
    /// The first line is not the expected header.
    #[error("line {line}: header is {found:?}; expected {expected:?}")]
    BadHeader {
        /// 1-based line number.
        line: usize,
        /// The header as found.
        found: String,
        /// What it should have been.
        expected: String,
    },
    /// A line has more or fewer fields than the header.
    #[error("line {line}: expected {expected} fields, found {found}")]
    FieldCount {
        /// 1-based line number.
        line: usize,
        /// Fields the header asks for.
        expected: usize,
        /// Fields on this line.
        found: usize,
    },
    /// A field holds a double quote; these files never quote, so the line
    /// cannot be split safely.
    #[error("line {line}: quoted fields are not supported")]
    Quoted {
        /// 1-based line number.
        line: usize,
    },
    /// A city name is empty.
    #[error("line {line}: city name is empty")]
    EmptyName {
        /// 1-based line number.
        line: usize,
    },
    /// A city name appears twice, so lookups by name would be ambiguous.
    #[error("line {line}: city {name:?} appears twice")]
    Duplicate {
        /// 1-based line number of the second occurrence.
        line: usize,
        /// The repeated name.
        name: String,
    },
    /// A numeric field does not parse as a finite number.
    #[error("line {line}: {field} {value:?} is not a finite number")]
    BadNumber {
        /// 1-based line number.
        line: usize,
        /// Which field.
        field: String,
        /// The text found.
        value: String,
    },
    /// A number parsed but lies outside what the field can hold.
    #[error("line {line}: {field} {value} is outside {min}..={max}")]
    OutOfRange {
        /// 1-based line number.
        line: usize,
        /// Which field.
        field: String,
        /// The value found.
        value: f64,
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// A matrix row is not for the city the header names in its position.
    #[error("line {line}: row is for {found:?}; expected {expected:?} (rows follow the header's order)")]
    RowOrder {
        /// 1-based line number.
        line: usize,
        /// The row's city.
        found: String,
        /// The city the header names at this position.
        expected: String,
    },
    /// The matrix has a different number of rows than columns.
    #[error("matrix has {found} rows; the header names {expected} cities")]
    RowCount {
        /// Cities in the header.
        expected: usize,
        /// Rows found.
        found: usize,
    },
    /// The two cells for one pair of cities disagree.
    #[error("line {line}: rtt {from:?}->{to:?} is {forward} ms but {to:?}->{from:?} is {backward} ms; the matrix must be symmetric")]
    Asymmetric {
        /// 1-based line number of the second cell of the pair.
        line: usize,
        /// The row's city.
        from: String,
        /// The column's city.
        to: String,
        /// The cell in this row.
        forward: String,
        /// The mirrored cell.
        backward: String,
    },
}

/// A city of the data set: where it is, so RTTs can be compared with
/// geography, and how many people live there, so tests can weight demand.
#[derive(Debug, Clone, PartialEq)]
pub struct City {
    /// The name used in both files.
    pub name: String,
    /// Degrees north, -90 to 90.
    pub latitude: f64,
    /// Degrees east, -180 to 180.
    pub longitude: f64,
    /// Inhabitants; `None` where the data set leaves the cell empty.
    pub population: Option<u64>,
}

/// Parses `cities.csv` (`City,Lat,Long,Population`). Blank lines are skipped;
/// an empty population is `None`.
pub fn parse_cities(text: &str) -> Result<Vec<City>, RttDataError> {
    let mut lines = numbered_lines(text);
    let (header_line, header) = lines.next().ok_or(RttDataError::Empty)?;
    let fields = split_fields(header_line, header)?;
    if fields != CITIES_HEADER {
        return Err(RttDataError::BadHeader { line: header_line, found: header.to_string(), expected: CITIES_HEADER.join(",") });
    }
    let mut seen = HashMap::new();
    let mut cities = Vec::new();
    for (line, text) in lines {
        let fields = split_fields(line, text)?;
        let [name, lat, long, population] = fields[..] else {
            return Err(RttDataError::FieldCount { line, expected: CITIES_HEADER.len(), found: fields.len() });
        };
        let name = parse_name(line, name, &mut seen)?;
        let latitude = parse_in_range(line, "latitude", lat, -90.0, 90.0)?;
        let longitude = parse_in_range(line, "longitude", long, -180.0, 180.0)?;
        let population = parse_population(line, population)?;
        cities.push(City { name, latitude, longitude, population });
    }
    Ok(cities)
}

/// Measured mean round-trip times between every pair of a set of cities, in
/// ms: the ground truth that network coordinates are tested against.
#[derive(Debug, Clone, PartialEq)]
pub struct RttMatrix {
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// Row-major, `names.len()²` cells; `None` where the file has no value.
    cells: Vec<Option<f64>>,
}

impl RttMatrix {
    /// Parses `city-rtt-ms.csv`: a header row of city names after an empty
    /// corner cell, then one row per city in the same order, each starting
    /// with its name. Empty cells become `None`; values must be finite, at
    /// least zero, and the same in both directions.
    pub fn parse(text: &str) -> Result<RttMatrix, RttDataError> {
        let mut lines = numbered_lines(text);
        let (header_line, header) = lines.next().ok_or(RttDataError::Empty)?;
        let header_fields = split_fields(header_line, header)?;
        let mut index = HashMap::new();
        let mut names = Vec::with_capacity(header_fields.len().saturating_sub(1));
        for name in header_fields.iter().skip(1) {
            names.push(parse_name(header_line, name, &mut index)?);
        }
        let n = names.len();
        let mut cells = Vec::with_capacity(n * n);
        let mut texts: Vec<&str> = Vec::with_capacity(n * n);
        let mut rows = 0;
        for (line, text) in lines {
            let fields = split_fields(line, text)?;
            if fields.len() != n + 1 {
                return Err(RttDataError::FieldCount { line, expected: n + 1, found: fields.len() });
            }
            let Some(expected) = names.get(rows) else {
                return Err(RttDataError::RowCount { expected: n, found: rows + 1 });
            };
            if fields[0] != expected {
                return Err(RttDataError::RowOrder { line, found: fields[0].to_string(), expected: expected.clone() });
            }
            for (col, value) in fields[1..].iter().enumerate() {
                let cell = if value.is_empty() {
                    None
                } else {
                    let field = format!("rtt to {:?}", names[col]);
                    Some(parse_in_range(line, &field, value, 0.0, f64::MAX)?)
                };
                if col < rows && cell != cells[col * n + rows] {
                    return Err(RttDataError::Asymmetric {
                        line,
                        from: expected.clone(),
                        to: names[col].clone(),
                        forward: value.to_string(),
                        backward: texts[col * n + rows].to_string(),
                    });
                }
                cells.push(cell);
                texts.push(value);
            }
            rows += 1;
        }
        if rows != n {
            return Err(RttDataError::RowCount { expected: n, found: rows });
        }
        Ok(RttMatrix { names, index, cells })
    }

    /// The cities, in the file's order; position `i` is city index `i`.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The index of the city called `name`, if the matrix has it.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The measured mean RTT between cities `i` and `j` in ms; `None` where
    /// the file has no value or an index is out of range.
    pub fn rtt_ms(&self, i: usize, j: usize) -> Option<f64> {
        let n = self.names.len();
        if i >= n || j >= n {
            return None;
        }
        self.cells[i * n + j]
    }

    /// How many cities the matrix covers.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the matrix covers no city at all.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Non-blank lines with their 1-based numbers, without line terminators.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, line)| (i + 1, line.trim_end_matches('\r'))).filter(|(_, line)| !line.trim().is_empty())
}

/// Splits one line on commas, trimming each field.
fn split_fields(line: usize, text: &str) -> Result<Vec<&str>, RttDataError> {
    if text.contains('"') {
        return Err(RttDataError::Quoted { line });
    }
    Ok(text.split(',').map(str::trim).collect())
}

/// Checks a city name is non-empty and new, and records its position.
fn parse_name(line: usize, name: &str, seen: &mut HashMap<String, usize>) -> Result<String, RttDataError> {
    if name.is_empty() {
        return Err(RttDataError::EmptyName { line });
    }
    let position = seen.len();
    if seen.insert(name.to_string(), position).is_some() {
        return Err(RttDataError::Duplicate { line, name: name.to_string() });
    }
    Ok(name.to_string())
}

/// Parses a finite number within `min..=max`.
fn parse_in_range(line: usize, field: &str, value: &str, min: f64, max: f64) -> Result<f64, RttDataError> {
    let parsed: f64 = value.parse().ok().filter(|v: &f64| v.is_finite()).ok_or_else(|| RttDataError::BadNumber {
        line,
        field: field.to_string(),
        value: value.to_string(),
    })?;
    if !(min..=max).contains(&parsed) {
        return Err(RttDataError::OutOfRange { line, field: field.to_string(), value: parsed, min, max });
    }
    Ok(parsed)
}

/// Parses a population written as a whole number, possibly with a `.0`
/// suffix as the data set does; empty means unknown.
fn parse_population(line: usize, value: &str) -> Result<Option<u64>, RttDataError> {
    if value.is_empty() {
        return Ok(None);
    }
    // 2^53: every whole number up to here is exact in an f64.
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0;
    let parsed = parse_in_range(line, "population", value, 0.0, MAX_EXACT)?;
    if parsed.fract() != 0.0 {
        return Err(RttDataError::BadNumber { line, field: "population".to_string(), value: value.to_string() });
    }
    // Whole, non-negative and at most 2^53, so the conversion is exact.
    Ok(Some(parsed as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CITIES: &str = "City,Lat,Long,Population\n\
        Adelaide,-34.928661,138.598633,1225235.0\n\
        Westpoort,52.41,4.82,\n";

    const MATRIX: &str = ",A,B,C\n\
        A,0.0,10.5,\n\
        B,10.5,0.0,20\n\
        C,,20,0\n";

    #[test]
    fn cities_parse_with_unknown_population() {
        let cities = parse_cities(CITIES).expect("valid cities");
        assert_eq!(cities.len(), 2);
        assert_eq!(cities[0].name, "Adelaide");
        assert_eq!(cities[0].latitude, -34.928661);
        assert_eq!(cities[0].longitude, 138.598633);
        assert_eq!(cities[0].population, Some(1_225_235));
        assert_eq!(cities[1].population, None);
    }

    #[test]
    fn cities_accept_crlf_and_blank_lines() {
        let text = "City,Lat,Long,Population\r\n\r\nBern,46.9,7.4,133115\r\n";
        let cities = parse_cities(text).expect("valid cities");
        assert_eq!(cities.len(), 1);
        assert_eq!(cities[0].population, Some(133_115));
    }

    #[test]
    fn malformed_cities_are_errors_with_line_numbers() {
        let cases: [(&str, RttDataError); 8] = [
            ("", RttDataError::Empty),
            (
                "Name,Lat,Long,Population\n",
                RttDataError::BadHeader { line: 1, found: "Name,Lat,Long,Population".into(), expected: "City,Lat,Long,Population".into() },
            ),
            ("City,Lat,Long,Population\nBern,46.9,7.4\n", RttDataError::FieldCount { line: 2, expected: 4, found: 3 }),
            (
                "City,Lat,Long,Population\nBern,north,7.4,1\n",
                RttDataError::BadNumber { line: 2, field: "latitude".into(), value: "north".into() },
            ),
            (
                "City,Lat,Long,Population\n\nBern,46.9,NaN,1\n",
                RttDataError::BadNumber { line: 3, field: "longitude".into(), value: "NaN".into() },
            ),
            (
                "City,Lat,Long,Population\nBern,91,7.4,1\n",
                RttDataError::OutOfRange { line: 2, field: "latitude".into(), value: 91.0, min: -90.0, max: 90.0 },
            ),
            (
                "City,Lat,Long,Population\nBern,46.9,7.4,1.5\n",
                RttDataError::BadNumber { line: 2, field: "population".into(), value: "1.5".into() },
            ),
            ("City,Lat,Long,Population\nBern,1,1,1\nBern,2,2,2\n", RttDataError::Duplicate { line: 3, name: "Bern".into() }),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_cities(text), Err(expected), "{text:?}");
        }
        assert_eq!(parse_cities("City,Lat,Long,Population\n\"Washington, DC\",38.9,-77,1\n"), Err(RttDataError::Quoted { line: 2 }));
        assert_eq!(parse_cities("City,Lat,Long,Population\n,1,1,1\n"), Err(RttDataError::EmptyName { line: 2 }));
        assert_eq!(
            parse_cities("City,Lat,Long,Population\nBern,1,1,-3\n"),
            Err(RttDataError::OutOfRange { line: 2, field: "population".into(), value: -3.0, min: 0.0, max: 9_007_199_254_740_992.0 })
        );
    }

    #[test]
    fn matrix_parses_with_missing_cells() {
        let m = RttMatrix::parse(MATRIX).expect("valid matrix");
        assert_eq!(m.len(), 3);
        assert!(!m.is_empty());
        assert_eq!(m.names(), ["A", "B", "C"]);
        assert_eq!(m.index("B"), Some(1));
        assert_eq!(m.index("Z"), None);
        assert_eq!(m.rtt_ms(0, 1), Some(10.5));
        assert_eq!(m.rtt_ms(1, 0), Some(10.5));
        assert_eq!(m.rtt_ms(1, 2), Some(20.0));
        assert_eq!(m.rtt_ms(0, 2), None);
        assert_eq!(m.rtt_ms(2, 0), None);
        assert_eq!(m.rtt_ms(3, 0), None);
        assert_eq!(m.rtt_ms(0, 3), None);
    }

    #[test]
    fn malformed_matrices_are_errors_with_line_numbers() {
        let cases: [(&str, RttDataError); 8] = [
            ("\n\n", RttDataError::Empty),
            (",A,B\nA,0,1\n", RttDataError::RowCount { expected: 2, found: 1 }),
            (",A\nA,0\nA,0\n", RttDataError::RowCount { expected: 1, found: 2 }),
            (",A,B\nA,0,1\nB,1\n", RttDataError::FieldCount { line: 3, expected: 3, found: 2 }),
            (",A,B\nB,0,1\nA,1,0\n", RttDataError::RowOrder { line: 2, found: "B".into(), expected: "A".into() }),
            (
                ",A,B\nA,0,1\nB,2,0\n",
                RttDataError::Asymmetric { line: 3, from: "B".into(), to: "A".into(), forward: "2".into(), backward: "1".into() },
            ),
            (",A,B\nA,0,fast\nB,1,0\n", RttDataError::BadNumber { line: 2, field: "rtt to \"B\"".into(), value: "fast".into() }),
            (
                ",A,B\nA,0,-1\nB,-1,0\n",
                RttDataError::OutOfRange { line: 2, field: "rtt to \"B\"".into(), value: -1.0, min: 0.0, max: f64::MAX },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(RttMatrix::parse(text), Err(expected), "{text:?}");
        }
        assert_eq!(RttMatrix::parse(",A,A\nA,0,0\nA,0,0\n"), Err(RttDataError::Duplicate { line: 1, name: "A".into() }));
        assert_eq!(RttMatrix::parse(",A,\nA,0,0\n,0,0\n"), Err(RttDataError::EmptyName { line: 1 }));
        assert_eq!(
            RttMatrix::parse(",A,B\nA,0,1\nB,,0\n"),
            Err(RttDataError::Asymmetric { line: 3, from: "B".into(), to: "A".into(), forward: "".into(), backward: "1".into() })
        );
    }

    #[test]
    fn error_messages_are_lowercase_and_name_the_line() {
        let err = RttMatrix::parse(",A,B\nA,0,1\nB,2,0\n").expect_err("asymmetric");
        let message = err.to_string();
        assert!(message.starts_with("line 3: rtt "), "{message}");
        assert!(!message.ends_with('.'), "{message}");
    }

    #[test]
    fn the_real_files_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/rtt");
        let (Ok(cities), Ok(matrix)) =
            (std::fs::read_to_string(dir.join("cities.csv")), std::fs::read_to_string(dir.join("city-rtt-ms.csv")))
        else {
            eprintln!("skipping: {} is not readable", dir.display());
            return;
        };
        let cities = parse_cities(&cities).expect("cities.csv parses");
        let matrix = RttMatrix::parse(&matrix).expect("city-rtt-ms.csv parses");
        assert_eq!(cities.len(), 242);
        assert_eq!(matrix.len(), 235);
        for name in matrix.names() {
            assert!(cities.iter().any(|c| &c.name == name), "{name} has no city row");
        }
        let adelaide = matrix.index("Adelaide").expect("Adelaide is in the matrix");
        let albany = matrix.index("Albany").expect("Albany is in the matrix");
        assert_eq!(matrix.rtt_ms(adelaide, albany), Some(248.4));
        assert_eq!(matrix.rtt_ms(adelaide, adelaide), Some(0.0));
    }
}
