//! Bad input never crashes anything and always gets a clear answer: the API
//! answers 4xx with `{"error":{"code","message"}}` and keeps serving; a bad
//! agent config exits non-zero naming the key.

mod common;

use std::process::Command;

use common::*;

fn assert_error(c: &Cluster, method: &str, path: &str, body: &[u8], want_status: u16, want_in_message: &str) {
    let (status, text) = http(&c.api, method, path, body);
    assert_eq!(status, want_status, "{method} {path}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON {text:?}: {e}"));
    let code = v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {v}"));
    let message = v["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message in {v}"));
    assert!(!code.is_empty());
    assert!(message.contains(want_in_message), "{method} {path}: {message:?} should mention {want_in_message:?}");
}

const NODE: &str =
    r#"{"id":"n1","type":"compute","location":{"latitude":1,"longitude":2},"resources":{"cpu":{"cores":4},"memory":{"total":1024}}}"#;

#[test]
fn the_api_refuses_bad_requests_clearly_and_keeps_serving() {
    let c = Cluster::start();
    assert_error(&c, "POST", "/api/v1/workloads", b"{\"id\": ", 400, "not valid JSON");
    assert_error(&c, "POST", "/api/v1/workloads", b"", 400, "empty");
    assert_error(
        &c,
        "POST",
        "/api/v1/workloads",
        br#"{"requirements":{"cpu":"four","memory":1},"spec":{"command":"x"}}"#,
        422,
        "requirements.cpu",
    );
    assert_error(
        &c,
        "POST",
        "/api/v1/workloads",
        br#"{"requirements":{"cpu":-2,"memory":1},"spec":{"command":"x"}}"#,
        422,
        "requirements.cpu",
    );
    assert_error(
        &c,
        "POST",
        "/api/v1/workloads",
        br#"{"requirements":{"cpu":1e300,"memory":1},"spec":{"command":"x"}}"#,
        422,
        "requirements.cpu",
    );
    assert_error(
        &c,
        "POST",
        "/api/v1/workloads",
        br#"{"requirements":{"cpu":1,"memory":-5},"spec":{"command":"x"}}"#,
        422,
        "requirements.memory",
    );
    assert_error(
        &c,
        "POST",
        "/api/v1/workloads",
        br#"{"requirements":{"cpu":1,"memory":"9000TiB"},"spec":{"command":"x"}}"#,
        422,
        "requirements.memory",
    );
    assert_error(
        &c,
        "POST",
        "/api/v1/workloads",
        br#"{"requirements":{"cpu":1,"memory":1},"spec":{"command":"x","restart":"sometimes"}}"#,
        422,
        "spec.restart",
    );
    assert_error(
        &c,
        "POST",
        "/api/v1/workloads",
        br#"{"requirements":{"cpu":1,"memory":1},"spec":{"command":"x"},"bogus":1}"#,
        422,
        "bogus",
    );
    assert_error(&c, "POST", "/api/v1/nodes", NODE.replace("compute", "toaster").as_bytes(), 422, "toaster");
    assert_error(&c, "POST", "/api/v1/nodes", NODE.replace("\"cores\":4", "\"cores\":-4").as_bytes(), 422, "resources.cpu.cores");
    assert_error(&c, "POST", "/api/v1/nodes", NODE.replace("\"latitude\":1", "\"latitude\":100").as_bytes(), 422, "location.latitude");
    assert_error(&c, "POST", "/api/v1/nodes", NODE.replace("n1", "bad id!").as_bytes(), 422, "id");
    let huge = format!("{{\"id\":\"{}\"}}", "x".repeat(10 << 20));
    assert_error(&c, "POST", "/api/v1/nodes", huge.as_bytes(), 413, "1 MiB");
    assert_error(&c, "POST", "/api/v1/nodes", b"{\"id\":\"\xff\xfe\x00\"}", 400, "not valid JSON");
    assert_error(&c, "GET", "/api/v1/workloads/no-such-workload", b"", 404, "no-such-workload");
    assert_error(&c, "DELETE", "/api/v1/workloads/no-such-workload", b"", 404, "no-such-workload");
    assert_error(&c, "POST", "/api/v1/workloads/no-such-workload/migrate", b"{}", 404, "no-such-workload");
    assert_error(&c, "GET", "/api/v1/nodes/no-such-node", b"", 404, "no-such-node");
    assert_error(&c, "PUT", "/api/v1/nodes/no-such-node/health", b"{\"score\":50}", 404, "no-such-node");
    assert_error(&c, "POST", "/api/v1/nodes/no-such-node/drain", b"", 404, "no-such-node");
    assert_error(&c, "GET", "/api/v1/nope", b"", 404, "no such route");
    assert_error(&c, "PATCH", "/api/v1/nodes", b"", 405, "method not allowed");
    assert_error(&c, "GET", "/api/v1/workloads/x/logs?tail=banana", b"", 400, "tail");
    assert_error(&c, "DELETE", "/api/v1/cache/x?scope=local&bogus=1", b"", 400, "bogus");
    assert_error(&c, "GET", "/api/v1/cache/x?node=a&node=b", b"", 400, "node");
    assert_error(&c, "GET", "/api/v1/cache/%FF", b"", 400, "UTF-8");
    // A cache write no agent would take is refused before it fans out.
    assert_error(&c, "PUT", "/api/v1/cache/k?ttl=5x", b"v", 400, "invalid duration");
    assert_error(&c, "PUT", "/api/v1/cache/k?type=vm%20image", b"v", 400, "type is");
    let long_key = format!("/api/v1/cache/{}", "k".repeat(1025));
    assert_error(&c, "PUT", &long_key, b"v", 400, "keys are 1-1024 bytes");
    assert_error(&c, "DELETE", "/api/v1/cache/a%0Ab", b"", 400, "control characters");
    assert_error(&c, "POST", "/api/v1/cache/prewarm", br#"{"keys":["ok","bad\u0007"]}"#, 400, "control characters");

    assert_eq!(api(&c.api, "POST", "/api/v1/nodes", NODE).0, 201);
    assert_error(&c, "PUT", "/api/v1/nodes/n1/health", b"{\"score\":150}", 422, "score");
    let spec = r#"{"id":"dup","requirements":{"cpu":1,"memory":1},"spec":{"command":"true"}}"#;
    assert_eq!(api(&c.api, "POST", "/api/v1/workloads", spec).0, 201);
    assert_error(&c, "POST", "/api/v1/workloads", spec.as_bytes(), 409, "already exists");

    let (status, v) = api(&c.api, "GET", "/healthz", "");
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")));
    let (status, doc) = api(&c.api, "GET", "/api/v1/openapi.json", "");
    assert_eq!(status, 200);
    assert!(doc["paths"]["/api/v1/workloads/{id}/migrate"].is_object(), "{doc}");
    assert!(doc["paths"]["/api/v1/nodes/{id}/cache/keys"]["get"].is_object(), "{doc}");
}

fn agent_with_config(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge-config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(VERGE)
        .args(["agent", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("VERGE_SERVER")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const CONFIG: &str = "server: 127.0.0.1:9\nnode:\n  id: edge-1\n  type: compute\n  location: {latitude: 1, longitude: 2}\nresources:\n  cpu: {cores: 4, reserved: 1}\n  memory: {total: 4GB, reserved: 1GB}\n";

#[test]
fn a_bad_agent_config_names_the_key_and_exits_non_zero() {
    for (broken, key) in [
        (CONFIG.replace("type: compute", "type: computer"), "node.type"),
        (CONFIG.replace("reserved: 1}", "reserved: 9}"), "resources.cpu.reserved"),
        (CONFIG.replace("total: 4GB", "total: lots"), "resources.memory.total"),
        (CONFIG.replace("latitude: 1", "latitude: 91"), "node.location.latitude"),
        (CONFIG.replace("server:", "sever:"), "sever"),
        (CONFIG.replace("id: edge-1", "id: \"edge 1\""), "node.id"),
    ] {
        let (ok, err) = agent_with_config(&broken);
        assert!(!ok, "accepted: {broken}");
        assert!(err.contains(key), "{key} not named in {err:?}");
    }
    let (ok, err) = agent_with_config("node: [unclosed");
    assert!(!ok && err.contains("line"), "{err}");
}
