//! Scheduling with the real binary: users named by city, unknown cities
//! refused at submission, and the provisioner asked for a node when work
//! waits for resources.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn users_by_city_land_in_their_city_and_unknown_cities_are_refused() {
    let mut c = Cluster::start();
    for s in [&NEW_YORK, &FRANKFURT, &TOKYO] {
        c.add_agent(s);
    }
    c.wait_active(&["nyc", "fra", "tyo"]);
    let spec = r#"{"id":"tokyo-app","strategy":"latency-first","requirements":{"cpu":0.1,"memory":"8MiB"},"constraints":{"users":[{"city":"tokyo"}],"maxLatencyMs":50},"spec":{"command":"sleep","args":["600"]}}"#;
    let (status, w) = api(&c.api, "POST", "/api/v1/workloads", spec);
    assert_eq!(status, 201, "{w}");
    let w = c.wait_placed("tokyo-app");
    assert_eq!(w["node"], "tyo", "{w}");
    assert!(w["reason"].as_str().unwrap().starts_with("latency-first strategy: ~0 ms"), "{w}");

    let spec = r#"{"requirements":{"cpu":0.1,"memory":"8MiB"},"constraints":{"users":[{"city":"Atlantis"}]},"spec":{"command":"true"}}"#;
    let (status, e) = api(&c.api, "POST", "/api/v1/workloads", spec);
    assert_eq!(status, 422, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().starts_with("constraints.users[0].city: unknown city \"Atlantis\""), "{e}");

    let spec = r#"{"requirements":{"cpu":0.1,"memory":"8MiB"},"constraints":{"geoProximity":{"latitude":48.8,"longitude":2.3},"users":[{"latitude":35.7,"longitude":139.7}],"maxDistanceKm":300},"spec":{"command":"true"}}"#;
    let (status, e) = api(&c.api, "POST", "/api/v1/workloads", spec);
    assert_eq!(status, 422, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().starts_with("constraints.maxDistanceKm: users"), "{e}");
}

#[test]
fn the_provisioner_is_asked_for_the_node_type_work_waits_for() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("requests");
    let yaml = format!(
        "provisioning:\n  threshold: 0.9\n  cooldown: 100ms\n  command: 'echo \"$VERGE_PROVISION_TYPE: $VERGE_PROVISION_REASON\" >> {}'\n",
        out.display()
    );
    let c = Cluster::start_with(Some(&yaml));
    let spec = r#"{"id":"needs-gpu","requirements":{"cpu":1,"memory":"1GiB"},"constraints":{"nodeTypes":["inference"]},"spec":{"command":"true"}}"#;
    let (status, w) = api(&c.api, "POST", "/api/v1/workloads", spec);
    assert_eq!(status, 201);
    assert_eq!(w["state"], "pending");
    let text =
        wait_until(Duration::from_secs(10), "a provisioning request", || std::fs::read_to_string(&out).ok().filter(|t| !t.is_empty()));
    assert_eq!(text.lines().next().unwrap(), "inference: 1 workloads wait for resources");
    let metrics = http(&c.api, "GET", "/metrics", b"").1;
    assert!(metrics.contains("verge_provision_requests_total"), "{metrics}");
}
