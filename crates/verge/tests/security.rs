//! Zero trust with the real binary: tokens and roles on the API, client
//! certificates on the gateway, TLS versions, attestation (replay, a changed
//! binary), certificate renewal and revocation, the audit chain.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::Value;
use verge_security::pki::{self, Identity};
use verge_security::tls;

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not a JSON error: {v}"))
}

#[test]
fn api_requests_need_a_valid_token_with_the_right_role() {
    let c = Cluster::start();
    let anon = c.api.with_token(None);
    let (status, v) = api(&anon, "GET", "/api/v1/nodes", "");
    assert_eq!((status, error_code(&v)), (401, "unauthenticated"), "{v}");
    let (status, v) = api(&c.api.with_token(Some("vrg1.nothex.x")), "GET", "/api/v1/nodes", "");
    assert_eq!((status, error_code(&v)), (401, "malformed_token"), "{v}");
    let (status, v) = api(&c.api.with_token(Some(&format!("vrg1.{}.{}", "0".repeat(16), "0".repeat(64)))), "GET", "/api/v1/nodes", "");
    assert_eq!((status, error_code(&v)), (401, "unknown_token"), "{v}");
    // Public: health and the CA certificate.
    assert_eq!(api(&anon, "GET", "/healthz", "").0, 200);
    let (status, ca) = api(&anon, "GET", "/api/v1/ca", "");
    assert_eq!(status, 200);
    assert_eq!(ca["fingerprint"].as_str().unwrap(), c.join.1);

    let viewer = c.api.with_token(Some(&c.token("viewer", None)));
    assert_eq!(api(&viewer, "GET", "/api/v1/nodes", "").0, 200);
    let (status, v) = api(&viewer, "POST", "/api/v1/workloads", r#"{"id":"w","spec":{"command":"true"}}"#);
    assert_eq!((status, error_code(&v)), (403, "forbidden"), "{v}");
    let operator = c.api.with_token(Some(&c.token("operator", None)));
    let (status, v) = api(&operator, "POST", "/api/v1/tokens", r#"{"role":"admin"}"#);
    assert_eq!((status, error_code(&v)), (403, "forbidden"), "{v}");
    let (status, v) = api(&operator, "GET", "/api/v1/audit/verify", "");
    assert_eq!(status, 403, "{v}");
    // A join token joins nodes and does nothing else; a bound one joins one node.
    let (status, _) = api(&c.api.with_token(Some(&c.join.0)), "GET", "/api/v1/nodes", "");
    assert_eq!(status, 403);
    let (status, t) = api(&c.api, "POST", "/api/v1/tokens", r#"{"role":"node","node":"edge-7"}"#);
    assert_eq!(status, 201, "{t}");
    let bound = c.api.with_token(t["token"].as_str());
    let csr = serde_json::json!({"node": "edge-8", "csr": pki::csr(&pki::new_key().unwrap()).unwrap()}).to_string();
    let (status, v) = api(&bound, "POST", "/api/v1/join", &csr);
    assert_eq!((status, error_code(&v)), (409, "join_refused"), "{v}");
    let csr = serde_json::json!({"node": "edge-7", "csr": pki::csr(&pki::new_key().unwrap()).unwrap()}).to_string();
    assert_eq!(api(&bound, "POST", "/api/v1/join", &csr).0, 201);

    // Expiry and revocation.
    let short = c.token("viewer", Some("1s"));
    let short_ep = c.api.with_token(Some(&short));
    wait_until(Duration::from_secs(10), "the token to expire", || {
        let (status, v) = api(&short_ep, "GET", "/api/v1/nodes", "");
        (status == 401).then(|| assert_eq!(error_code(&v), "token_expired", "{v}"))
    });
    let (_, list) = api(&c.api, "GET", "/api/v1/tokens", "");
    let viewer_id = viewer.token.as_deref().unwrap().split('.').nth(1).unwrap().to_string();
    assert!(list.as_array().unwrap().iter().any(|t| t["id"] == viewer_id.as_str() && t["state"] == "active"), "{list}");
    assert!(!list.to_string().contains(viewer.token.as_deref().unwrap().rsplit('.').next().unwrap()), "token secrets listed");
    let (ok, _, err) = c.cli(&["token", "revoke", &viewer_id]);
    assert!(ok, "{err}");
    let (status, v) = api(&viewer, "GET", "/api/v1/nodes", "");
    assert_eq!((status, error_code(&v)), (401, "token_revoked"), "{v}");

    // Refusals and changes are in the audit chain, and the CLI verifies it.
    let (ok, out, err) = c.cli(&["audit", "ls", "--json"]);
    assert!(ok, "{err}");
    let entries: Value = serde_json::from_str(&out).unwrap();
    let outcomes: Vec<&str> = entries.as_array().unwrap().iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert!(outcomes.contains(&"denied") && outcomes.contains(&"201"), "{outcomes:?}");
    let metrics = http(&c.api, "GET", "/metrics", b"").1;
    assert!(metrics.contains("verge_auth_refused_total{status=\"401\"}"), "{metrics}");
}

/// A TLS client that presents `me` to the gateway and asks to upgrade.
fn gateway_with(c: &Cluster, me: Option<tls::Identity>) -> Result<String, String> {
    let ca = pki::pem_certs(&std::fs::read_to_string(c.path("server/ca.crt")).unwrap()).unwrap().remove(0);
    let cfg = tls::client_config(&ca, me).unwrap();
    let tcp = TcpStream::connect(&c.gateway).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ClientConnection::new(cfg, tls::server_name()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let req = format!(
        "GET /v1/agent HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        c.gateway
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn the_gateway_refuses_foreign_certificates_and_old_tls() {
    let c = Cluster::start();
    // No certificate: the handshake passes (joining needs that) but the agent protocol does not.
    let answer = gateway_with(&c, None).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401") && answer.contains("no_certificate"), "{answer}");

    // Signed by another CA, naming a node: refused in the handshake.
    let other = tempfile::tempdir().unwrap();
    let (foreign, _) = pki::Ca::load_or_create(other.path(), now_ms()).unwrap();
    let key = pki::new_key().unwrap();
    let forged = foreign.sign_csr(&pki::csr(&key).unwrap(), &Identity::Node("fra".into()), now_ms(), 3_600_000).unwrap();
    let me = tls::Identity::new(&forged.cert_pem, key.serialize_der()).unwrap();
    assert!(gateway_with(&c, Some(me)).is_err(), "a certificate from another CA got through");

    // Self-signed.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["node.verge".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI("spiffe://verge/node/fra".try_into().unwrap()));
    let selfsigned = params.self_signed(&key).unwrap();
    let me = tls::Identity::new(&selfsigned.pem(), key.serialize_der()).unwrap();
    assert!(gateway_with(&c, Some(me)).is_err(), "a self-signed certificate got through");

    // TLS 1.0 and 1.1 clients get a fatal alert (handshake_failure or protocol_version).
    for minor in [1u8, 2] {
        let alert = old_tls_hello(&c.api.addr, minor);
        assert_eq!(alert.first(), Some(&0x15), "TLS 1.{}: expected an alert, got {alert:?}", minor - 1);
        assert_eq!(alert.get(5), Some(&2), "TLS 1.{}: expected a fatal alert, got {alert:?}", minor - 1);
        assert!(matches!(alert.get(6), Some(40 | 70)), "TLS 1.{}: unexpected alert {alert:?}", minor - 1);
    }
    // Plain HTTP to the TLS port gets nothing useful.
    let plain = {
        let mut s = TcpStream::connect(&c.api.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(!plain.contains("\"id\""), "plain HTTP answered: {plain}");
    let metrics = http(&c.api, "GET", "/metrics", b"").1;
    let refused = metrics.lines().find(|l| l.starts_with("verge_tls_refused_total")).unwrap();
    assert!(refused.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 4, "{refused}");
}

/// Sends a ClientHello offering only TLS 1.`minor - 1` and returns the first bytes answered.
fn old_tls_hello(addr: &str, minor: u8) -> Vec<u8> {
    let mut body = vec![3, minor];
    body.extend([7u8; 32]);
    body.push(0);
    // TLS_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA.
    body.extend([0, 4, 0x00, 0x2f, 0xc0, 0x13]);
    body.extend([1, 0]);
    let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend(&body);
    let mut rec = vec![0x16, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend(&hs);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&rec).unwrap();
    let mut out = vec![0u8; 7];
    let _ = s.read_exact(&mut out);
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn attestation_passes_refuses_replays_and_quarantines_a_changed_binary() {
    let mut c = Cluster::start();
    c.add_agent(&FRANKFURT);
    c.wait_active(&["fra"]);
    let node = wait_until(Duration::from_secs(20), "fra to attest", || {
        let n = c.get("/api/v1/nodes/fra");
        (n["attestation"]["state"] == "passed").then_some(n)
    });
    assert!(node["quarantined"].is_null(), "{node}");
    assert!(node["trust"]["score"].as_u64().unwrap() >= 60, "{node}");

    // A join token cannot take over the identity of a connected node.
    let csr = serde_json::json!({"node": "fra", "csr": pki::csr(&pki::new_key().unwrap()).unwrap()}).to_string();
    let (status, v) = api(&c.api.with_token(Some(&c.join.0)), "POST", "/api/v1/join", &csr);
    assert_eq!((status, error_code(&v)), (409, "node_connected"), "{v}");

    // Replaying the evidence the agent sent is refused.
    let evidence = std::fs::read_to_string(c.path("fra/data/attestation.json")).unwrap();
    let joiner = c.api.with_token(Some(&c.join.0));
    let (status, v) = api(&joiner, "POST", "/api/v1/nodes/fra/attestation", &evidence);
    assert_eq!((status, error_code(&v)), (403, "replayed"), "{v}");
    // Garbage evidence is a clear 400.
    let (status, v) = api(&joiner, "POST", "/api/v1/nodes/fra/attestation", r#"{"node":"fra"}"#);
    assert_eq!((status, error_code(&v)), (400, "malformed"), "{v}");
    assert!(c.get("/api/v1/nodes/fra")["quarantined"].is_null(), "a replay must not quarantine the real node");

    // An agent whose binary differs by one byte is quarantined and gets no work.
    let changed = c.path("verge-changed");
    std::fs::copy(VERGE, &changed).unwrap();
    std::fs::OpenOptions::new().append(true).open(&changed).unwrap().write_all(b"\0").unwrap();
    c.add_agent_with_binary(&TOKYO, &changed);
    let tyo = wait_until(Duration::from_secs(30), "tyo to be quarantined", || {
        let (status, n) = api(&c.api, "GET", "/api/v1/nodes/tyo", "");
        (status == 200 && !n["quarantined"].is_null()).then_some(n)
    });
    assert_eq!(tyo["attestation"]["state"], "failed", "{tyo}");
    assert!(tyo["quarantined"].as_str().unwrap().contains("allowlist"), "{tyo}");
    let (ok, out, _) = c.cli(&["node", "ls"]);
    assert!(ok && out.lines().any(|l| l.starts_with("tyo") && l.contains("QUARANTINED")), "{out}");
    let spec = r#"{"id":"only-tyo","requirements":{"cpu":0.1,"memory":"16MiB"},"constraints":{"requiredLabels":{"site":"tyo"}},"spec":{"command":"sleep","args":["600"]}}"#;
    assert_eq!(api(&c.api, "POST", "/api/v1/workloads", spec).0, 201);
    let w = c.get("/api/v1/workloads/only-tyo");
    assert!(w["node"].is_null(), "a quarantined node got work: {w}");
    // No data moves to it either.
    let (status, v) = api(&c.api, "POST", "/api/v1/sync", r#"{"source":"fra:a","target":"tyo:b"}"#);
    assert_eq!((status, error_code(&v)), (409, "untrusted"), "{v}");
    let (ok, out, err) = c.cli(&["audit", "ls", "--json", "--limit", "1000"]);
    assert!(ok, "{err}");
    assert!(out.contains("binary_not_allowed"), "{out}");
}

#[test]
fn certificates_renew_without_dropping_work_and_removal_revokes() {
    let mut c = Cluster::start_with(Some("security:\n  cert_ttl: 6s\n"));
    c.add_agent(&FRANKFURT);
    c.add_agent(&TOKYO);
    c.wait_active(&["fra", "tyo"]);
    let spec = r#"{"id":"steady","requirements":{"cpu":0.1,"memory":"16MiB"},"spec":{"command":"sleep","args":["600"]}}"#;
    assert_eq!(api(&c.api, "POST", "/api/v1/workloads", spec).0, 201);
    let pid = wait_until(Duration::from_secs(20), "the workload to run", || {
        let w = c.get("/api/v1/workloads/steady");
        (w["state"] == "running").then(|| w["status"]["pid"].as_u64()).flatten()
    });
    let serial = |c: &Cluster| {
        let pem = std::fs::read_to_string(c.path("fra/data/tls/node.crt")).unwrap();
        pki::CertInfo::parse(&pki::pem_certs(&pem).unwrap()[0]).unwrap().serial
    };
    let first = serial(&c);
    // fra's own renewals (tyo renews too), and the renewed certificate on
    // fra's disk: the server audits an issue before the agent stores it.
    wait_until(Duration::from_secs(30), "fra's certificate to be renewed twice and stored", || {
        let (ok, out, _) = c.cli(&["audit", "ls", "--json", "--limit", "1000"]);
        let entries: Value = if ok { serde_json::from_str(&out).ok()? } else { return None };
        let renewed = entries.as_array()?.iter().filter(|e| e["action"] == "renew certificate" && e["target"] == "fra").count();
        (renewed >= 2 && serial(&c) != first).then_some(())
    });
    let w = c.get("/api/v1/workloads/steady");
    assert_eq!((w["state"].as_str(), w["status"]["pid"].as_u64()), (Some("running"), Some(pid)), "{w}");
    // The renewed certificate works for a new connection.
    c.kill_agent("fra");
    c.restart_agent("fra");
    wait_until(Duration::from_secs(20), "fra to reconnect with the renewed certificate", || {
        let n = c.get("/api/v1/nodes/fra");
        (n["connected"] == true && n["attestation"]["state"] == "passed").then_some(())
    });

    // Removing the node revokes its certificate: it cannot come back, and
    // other nodes' data ports refuse it.
    let fra_identity = || {
        let cert = std::fs::read_to_string(c.path("fra/data/tls/node.crt")).unwrap();
        let key = pki::load_key(&std::fs::read_to_string(c.path("fra/data/tls/node.key")).unwrap()).unwrap();
        tls::Identity::new(&cert, key.serialize_der()).unwrap()
    };
    let ca = pki::pem_certs(&std::fs::read_to_string(c.path("server/ca.crt")).unwrap()).unwrap().remove(0);
    let tyo_addr = c.get("/api/v1/nodes/tyo")["data_addr"].as_str().unwrap().to_string();
    let as_fra = Endpoint::custom(&tyo_addr, tls::client_config(&ca, Some(fra_identity())).unwrap(), tls::node_name());
    assert_eq!(http(&as_fra, "GET", "/api/v1/cache", b"").0, 200);
    let (status, _) = api(&c.api, "DELETE", "/api/v1/nodes/fra", "");
    assert_eq!(status, 200);
    let as_fra = Endpoint::custom(&tyo_addr, tls::client_config(&ca, Some(fra_identity())).unwrap(), tls::node_name());
    wait_until(Duration::from_secs(10), "tyo's data port to refuse fra", || {
        let (status, body) = http(&as_fra, "GET", "/api/v1/cache", b"");
        (status == 403).then(|| assert!(body.contains("certificate_revoked"), "{body}"))
    });
    let log = c.path("fra/agent.log");
    // Its log says how the node joins again.
    let rejoin = format!("it joins again once {} is deleted", c.path("fra/data/tls").display());
    wait_until(Duration::from_secs(20), "the agent to be refused", || {
        std::fs::read_to_string(&log).ok().filter(|l| l.contains("was revoked") && l.contains(&rejoin)).map(|_| ())
    });
    let (status, _) = api(&c.api, "GET", "/api/v1/nodes/fra", "");
    assert_eq!(status, 404, "a revoked node registered again");
}

#[test]
fn a_tampered_audit_entry_is_found() {
    let c = Cluster::start();
    for role in ["viewer", "operator", "viewer"] {
        c.token(role, Some("1h"));
    }
    let (ok, out, err) = c.cli(&["audit", "verify"]);
    assert!(ok, "{out}{err}");
    let path = c.path("server/audit.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let line2 = text.lines().nth(1).unwrap();
    let offset = text.find(line2).unwrap() + line2.find("201").unwrap();
    // Overwrite in place, as an intruder hiding a change would.
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset as u64)).unwrap();
    f.write_all(b"403").unwrap();
    drop(f);
    let (ok, _, err) = c.cli(&["audit", "verify"]);
    assert!(!ok, "tampering went unnoticed");
    assert!(err.contains("entry 2"), "{err}");
    let (status, v) = api(&c.api, "GET", "/api/v1/audit/verify", "");
    assert_eq!((status, v["intact"].as_bool()), (200, Some(false)), "{v}");
    assert_eq!(v["firstTampered"]["seq"], 2, "{v}");
}

/// Puts a text value into a node's edge cache (the JSON form of `PUT`).
fn cache_put(ep: &Endpoint, key: &str, value: &[u8]) -> (u16, String) {
    let body = serde_json::json!({"value": String::from_utf8_lossy(value), "type": "app_data"}).to_string();
    http(ep, "PUT", &format!("/api/v1/cache/{key}"), body.as_bytes())
}

#[test]
fn cache_data_is_sealed_on_disk_and_its_key_rotates() {
    let mut c = Cluster::start();
    c.agent_yaml = "  encryption: true\n  key_rotation: 3s\ncache:\n  max_value: 64KiB\n".into();
    c.add_agent(&FRANKFURT);
    c.wait_active(&["fra"]);
    let port = c.data_port("fra");
    let secret = b"TOP-SECRET-PAYLOAD ".repeat(100);
    let (status, text) = cache_put(&port, "docs/plan", &secret);
    assert_eq!(status, 201, "{text}");
    let (status, got) = http(&port, "GET", "/api/v1/cache/docs/plan", b"");
    assert_eq!((status, got.as_bytes()), (200, &secret[..]));

    // On disk: sealed, never the plaintext.
    let warm = c.path("fra/data/cache/warm");
    let file = std::fs::read_dir(&warm).unwrap().flatten().map(|e| e.path()).find(|p| p.is_file()).unwrap();
    let raw = std::fs::read(&file).unwrap();
    assert!(raw.starts_with(b"VSEAL1"), "not sealed");
    assert!(!raw.windows(10).any(|w| w == b"TOP-SECRET"), "plaintext on disk");
    let first_key = verge_security::seal::sealed_key_id(&raw).unwrap();

    // The key rotates and the entry is re-encrypted under the new one; old keys go.
    wait_until(Duration::from_secs(30), "the entry to be re-encrypted under a newer key", || {
        let raw = std::fs::read(&file).ok()?;
        (verge_security::seal::sealed_key_id(&raw)? > first_key).then_some(())
    });
    wait_until(Duration::from_secs(30), "old keys to be retired", || {
        (std::fs::read_dir(c.path("fra/data/keys")).ok()?.count() == 1).then_some(())
    });
    for k in std::fs::read_dir(c.path("fra/data/keys")).unwrap().flatten() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(k.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }
    let (status, got) = http(&port, "GET", "/api/v1/cache/docs/plan", b"");
    assert_eq!((status, got.as_bytes()), (200, &secret[..]));

    // Without the key the data is unreadable: an agent that lost its keys serves nothing from it.
    c.kill_agent("fra");
    std::fs::rename(c.path("fra/data/keys"), c.path("stolen-keys")).unwrap();
    c.restart_agent("fra");
    let port = wait_until(Duration::from_secs(20), "fra to come back", || {
        let n = c.get("/api/v1/nodes/fra");
        (n["connected"] == true).then(|| c.data_port("fra"))
    });
    let (status, _) = http(&port, "GET", "/api/v1/cache/docs/plan", b"");
    assert_eq!(status, 404, "an entry sealed under a lost key was served");

    // Bad input is refused clearly.
    let (status, text) = cache_put(&port, &"k".repeat(2000), b"x");
    assert_eq!(status, 400, "{text}");
    let (status, text) = cache_put(&port, "big", &vec![b'z'; 100 << 10]);
    assert_eq!(status, 413, "{text}");

    // The node reports encryption at rest, which compliance checks.
    let (ok, out, err) = c.cli(&["compliance", "report", "--pack", "iso27001", "--all", "--json"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let a824 = report["findings"].as_array().unwrap().iter().find(|f| f["control"] == "A.8.24" && f["subject"] == "fra").unwrap();
    assert_eq!(a824["passed"], true, "{a824}");
}

#[test]
fn a_node_away_longer_than_its_certificate_joins_again() {
    let mut c = Cluster::start_with(Some("security:\n  cert_ttl: 3s\n"));
    c.add_agent(&FRANKFURT);
    c.wait_active(&["fra"]);
    c.kill_agent("fra");
    let cert = c.path("fra/data/tls/node.crt");
    let info = || pki::CertInfo::parse(&pki::pem_certs(&std::fs::read_to_string(&cert).unwrap()).unwrap()[0]).unwrap();
    let before = info();
    wait_until(Duration::from_secs(10), "the certificate to expire", || (now_ms() > before.not_after_ms + 1_000).then_some(()));
    c.restart_agent("fra");
    wait_until(Duration::from_secs(20), "fra to rejoin and attest", || {
        let n = c.get("/api/v1/nodes/fra");
        (n["connected"] == true && n["attestation"]["state"] == "passed").then_some(())
    });
    assert_ne!(info().serial, before.serial);
}

#[test]
fn a_node_restarted_with_an_expired_certificate_waits_out_its_old_session() {
    // A second run of fra (its directory copied, as restored from a backup)
    // whose certificate has expired finds the first run connected: a join
    // may not take over a live node, so the new run waits and retries
    // instead of exiting. Then the first run freezes (SIGSTOP: its
    // connection stays open, as after a power loss, but its heartbeats stop
    // and its lease runs out), and the new run joins again and takes over.
    let mut c = Cluster::start_with(Some("security:\n  cert_ttl: 3s\n"));
    c.add_agent(&FRANKFURT);
    c.wait_active(&["fra"]);
    c.copy_agent_dir("fra", "fra-again");
    let cert = c.path("fra-again/data/tls/node.crt");
    let info = || pki::CertInfo::parse(&pki::pem_certs(&std::fs::read_to_string(&cert).unwrap()).unwrap()[0]).unwrap();
    let before = info();
    wait_until(Duration::from_secs(10), "the copy's certificate to expire", || (now_ms() > before.not_after_ms + 1_000).then_some(()));
    c.start_agent_in("fra-again");
    let log = c.path("fra-again/agent.log");
    wait_until(Duration::from_secs(20), "the new run to be told fra is connected", || {
        std::fs::read_to_string(&log).ok().filter(|l| l.contains("is connected with its certificate")).map(|_| ())
    });
    assert!(c.agent_running("fra-again"), "the new run gave up: {}", std::fs::read_to_string(&log).unwrap_or_default());
    c.freeze_agent("fra");
    wait_until(Duration::from_secs(30), "the new run to join again and connect", || {
        let n = c.get("/api/v1/nodes/fra");
        let serial = info().serial;
        (serial != before.serial && n["certificate"]["serial"] == serial.as_str() && n["attestation"]["state"] == "passed").then_some(())
    });
}

#[test]
fn operators_add_their_own_compliance_packs() {
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("ours.yaml");
    std::fs::write(
        &pack,
        "name: ours\ntitle: Our edge baseline\ncontrols:\n  - id: OURS-1\n    title: TLS everywhere\n    check: { fact: tls, equals: true }\n    remediation: Turn security.tls on.\n  - id: OURS-2\n    title: Nodes name an owner\n    check: { fact: label.owner, present: true }\n    remediation: Label every node with owner=TEAM.\n",
    )
    .unwrap();
    let c = Cluster::start_with(Some(&format!("security:\n  compliance_packs: [\"{}\"]\n", pack.display())));
    let node =
        r#"{"id":"n1","type":"compute","location":{"latitude":1,"longitude":2},"resources":{"cpu":{"cores":4},"memory":{"total":1024}}}"#;
    assert_eq!(api(&c.api, "POST", "/api/v1/nodes", node).0, 201);
    let (status, r) = api(&c.api, "GET", "/api/v1/compliance/report?pack=ours", "");
    assert_eq!(status, 200, "{r}");
    let findings = r["findings"].as_array().unwrap();
    let result = |id: &str| findings.iter().find(|f| f["control"] == id).map(|f| f["passed"].as_bool().unwrap()).unwrap();
    assert!(result("OURS-1"));
    assert!(!result("OURS-2"));
    let (status, v) = api(&c.api, "GET", "/api/v1/compliance/report?pack=theirs", "");
    assert_eq!((status, error_code(&v)), (404, "not_found"), "{v}");

    // A broken pack stops the server with a message naming it.
    std::fs::write(&pack, "name: ours\ncontrols: []\n").unwrap();
    let out = std::process::Command::new(VERGE)
        .args(["server", "--api-addr", "127.0.0.1:0", "--gateway-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(c.path("server.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ours.yaml"), "{}", String::from_utf8_lossy(&out.stderr));
}
