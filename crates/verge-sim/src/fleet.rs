//! The simulated fleet: nodes in real cities, weighted by population, with
//! RTTs from the real matrix plus a small per-node access delay.

use std::collections::HashMap;

use verge_core::{Bytes, CpuResources, Location, MemoryResources, NodeId, NodeSpec, NodeType, Resources, StorageResources, Tier};
use verge_sched::{parse_cities, RttMatrix, SplitMix64};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The city list or RTT matrix is unusable.
    #[error("{0}")]
    Data(String),
    /// The server misbehaved or could not be reached.
    #[error("{0}")]
    Server(String),
}

/// A city present in both the city list and the RTT matrix.
#[derive(Debug, Clone)]
pub struct SimCity {
    /// Name as in the files.
    pub name: String,
    /// Population, the weight for placing nodes and users.
    pub population: f64,
    /// Row of the city in the matrix.
    pub row: usize,
    /// Region label: americas, emea or apac, from the longitude.
    pub region: &'static str,
}

/// One simulated node.
#[derive(Debug, Clone)]
pub struct SimNode {
    /// What it declares in its hello.
    pub spec: NodeSpec,
    /// Index of its city in [`Fleet::cities`].
    pub city: usize,
    /// Its last-mile delay, added to every RTT it measures, ms.
    pub access_ms: f64,
}

/// The whole simulated fleet and the data behind it.
#[derive(Debug)]
pub struct Fleet {
    /// Cities nodes and users can be in.
    pub cities: Vec<SimCity>,
    /// The nodes.
    pub nodes: Vec<SimNode>,
    /// Node index by id.
    pub index: HashMap<NodeId, usize>,
    /// Node indices by city.
    pub by_city: HashMap<usize, Vec<usize>>,
    matrix: RttMatrix,
    cumulative: Vec<f64>,
    /// The city the server is taken to be in, for agent-to-server RTTs.
    pub server_city: usize,
}

/// Node profiles: (type, tier, cores, memory GiB, share of the fleet in %).
const PROFILES: [(NodeType, Tier, f64, u64, u32); 5] = [
    (NodeType::Compute, Tier::Metro, 8.0, 16, 50),
    (NodeType::Hybrid, Tier::Metro, 16.0, 32, 20),
    (NodeType::Storage, Tier::Regional, 4.0, 8, 15),
    (NodeType::Gateway, Tier::Access, 2.0, 4, 10),
    (NodeType::Inference, Tier::Metro, 8.0, 32, 5),
];

fn region(longitude: f64) -> &'static str {
    if longitude < -25.0 {
        "americas"
    } else if longitude < 60.0 {
        "emea"
    } else {
        "apac"
    }
}

impl Fleet {
    /// Builds `n` nodes from a `City,Lat,Long,Population` list and an RTT
    /// matrix in the formats of `shared/data/rtt/`.
    pub fn build(cities_csv: &str, rtt_csv: &str, n: usize, seed: u64) -> Result<Fleet, SimError> {
        let list = parse_cities(cities_csv).map_err(|e| SimError::Data(format!("cities: {e}")))?;
        let matrix = RttMatrix::parse(rtt_csv).map_err(|e| SimError::Data(format!("rtt matrix: {e}")))?;
        let mut points = Vec::new();
        let cities: Vec<SimCity> = list
            .iter()
            .filter_map(|c| {
                let row = matrix.index(&c.name)?;
                points.push((c.latitude, c.longitude));
                Some(SimCity {
                    name: c.name.clone(),
                    population: c.population.unwrap_or(0).max(1) as f64,
                    row,
                    region: region(c.longitude),
                })
            })
            .collect();
        if cities.is_empty() {
            return Err(SimError::Data("no city of the list is in the RTT matrix".into()));
        }
        let mut acc = 0.0;
        let cumulative = cities.iter().map(|c| {
            acc += c.population;
            acc
        });
        let cumulative: Vec<f64> = cumulative.collect();
        let server_city = cities.iter().position(|c| c.name == "Frankfurt").unwrap_or(0);
        let mut fleet =
            Fleet { cities, nodes: Vec::with_capacity(n), index: HashMap::new(), by_city: HashMap::new(), matrix, cumulative, server_city };
        let mut rng = SplitMix64(seed);
        let total_share: u32 = PROFILES.iter().map(|p| p.4).sum();
        for i in 0..n {
            let city = fleet.pick_city(&mut rng);
            let mut roll = (rng.next_u64() % total_share as u64) as u32;
            let profile = PROFILES.iter().find(|p| {
                let hit = roll < p.4;
                roll = roll.saturating_sub(p.4);
                hit
            });
            let (node_type, tier, cores, mem_gib, _) = *profile.unwrap_or(&PROFILES[0]);
            let c = &fleet.cities[city];
            let slug: String = c.name.to_lowercase().chars().map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' }).collect();
            let id = NodeId::new(format!("sim-{i:05}-{}", slug.chars().take(40).collect::<String>()))
                .map_err(|e| SimError::Data(format!("node id: {e}")))?;
            let (lat, lon) = points[city];
            let mut labels = std::collections::BTreeMap::from([("region".to_string(), c.region.to_string())]);
            if node_type == NodeType::Inference {
                labels.insert("gpu".into(), "nvidia".into());
            }
            let spec = NodeSpec {
                id: id.clone(),
                node_type,
                tier,
                location: Location { latitude: lat, longitude: lon, city: c.name.clone(), country: String::new() },
                resources: Resources {
                    cpu: CpuResources { cores, frequency: Some(3.0) },
                    memory: MemoryResources { total: Bytes(mem_gib << 30) },
                    storage: StorageResources { total: Bytes(500 << 30), kind: "SSD".into(), iops: Some(50_000) },
                },
                labels,
                data_addr: None,
            };
            fleet.index.insert(id, i);
            fleet.by_city.entry(city).or_default().push(i);
            fleet.nodes.push(SimNode { spec, city, access_ms: 0.5 + 1.5 * rng.next_f64() });
        }
        Ok(fleet)
    }

    /// A city drawn with probability proportional to its population.
    pub fn pick_city(&self, rng: &mut SplitMix64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = rng.next_f64() * total;
        self.cumulative.partition_point(|&c| c <= x).min(self.cities.len() - 1)
    }

    /// The measured RTT between two cities, ms (0 within a city).
    pub fn city_rtt_ms(&self, a: usize, b: usize) -> f64 {
        if a == b {
            return 0.0;
        }
        self.matrix.rtt_ms(self.cities[a].row, self.cities[b].row).unwrap_or(f64::NAN)
    }

    /// What node `a` measures to node `b`.
    pub fn node_rtt_ms(&self, a: usize, b: usize) -> f64 {
        let (na, nb) = (&self.nodes[a], &self.nodes[b]);
        self.city_rtt_ms(na.city, nb.city) + na.access_ms + nb.access_ms
    }

    /// What node `a` measures to the server.
    pub fn server_rtt_ms(&self, a: usize) -> f64 {
        let n = &self.nodes[a];
        self.city_rtt_ms(n.city, self.server_city) + n.access_ms + 0.5
    }

    /// What a user in `city` gets from node `n`.
    pub fn user_rtt_ms(&self, city: usize, n: usize) -> f64 {
        self.city_rtt_ms(city, self.nodes[n].city) + self.nodes[n].access_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CITIES: &str = "City,Lat,Long,Population\nA,0,0,1000\nB,0,10,10\nC,50,100,1\n";
    const RTT: &str = ",A,B,C\nA,0,20,200\nB,20,0,190\nC,200,190,0\n";

    #[test]
    fn nodes_follow_population_and_rtts_come_from_the_matrix() {
        let f = Fleet::build(CITIES, RTT, 500, 7).unwrap();
        let in_a = f.nodes.iter().filter(|n| n.city == 0).count();
        assert!(in_a > 450, "{in_a}");
        let (a, b) = (0, f.nodes.iter().position(|n| n.city != f.nodes[0].city).unwrap_or(1));
        let rtt = f.node_rtt_ms(a, b);
        let base = f.city_rtt_ms(f.nodes[a].city, f.nodes[b].city);
        assert!(rtt >= base + 1.0 && rtt <= base + 4.0, "{rtt} vs {base}");
        assert_eq!(f.cities[2].region, "apac");
        assert!(Fleet::build(CITIES, ",X\nX,0\n", 1, 1).is_err());
    }
}
