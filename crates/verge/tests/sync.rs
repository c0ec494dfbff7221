//! Delta sync between real agents: `verge sync push|pull`, server sync jobs,
//! resuming after the receiver is killed, and hostile input on the data port.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Runs the CLI with the cluster's server and a private state dir.
fn cli(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = c.cli_command(args).output().expect("run verge");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Files under `dir` with their contents, sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn two_agents() -> Cluster {
    let mut c = Cluster::start();
    c.add_agent(&FRANKFURT);
    c.add_agent(&TOKYO);
    c.wait_active(&["fra", "tyo"]);
    wait_until(Duration::from_secs(10), "data ports to be advertised", || {
        let nodes = c.get("/api/v1/nodes");
        nodes.as_array()?.iter().all(|n| n["data_addr"].is_string()).then_some(())
    });
    c
}

fn files_of(c: &Cluster, node: &str, path: &str) -> std::path::PathBuf {
    c.path(node).join("data/files").join(path)
}

#[test]
fn push_pull_and_server_jobs_between_real_agents() {
    let c = two_agents();
    let src = c.path("src");
    std::fs::create_dir_all(src.join("models/v1")).unwrap();
    std::fs::write(src.join("models/v1/weights.bin"), noise(3 << 20, 1)).unwrap();
    std::fs::write(src.join("README.txt"), "edge models\n".repeat(100)).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();

    let (ok, out, err) = cli(&c, &["sync", "push", src.to_str().unwrap(), "--to", "fra:proj", "--json"]);
    assert!(ok, "push failed: {err}");
    let first: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(tree(&files_of(&c, "fra", "proj")), tree(&src));
    assert!(files_of(&c, "fra", "proj/empty").is_dir());

    // A small change travels as a small delta against the acknowledged version.
    let mut w = std::fs::read(src.join("models/v1/weights.bin")).unwrap();
    w[1_000_000..1_000_100].copy_from_slice(&[7u8; 100]);
    std::fs::write(src.join("models/v1/weights.bin"), &w).unwrap();
    let (ok, out, err) = cli(&c, &["sync", "push", src.to_str().unwrap(), "--to", "fra:proj", "--json"]);
    assert!(ok, "second push failed: {err}");
    let second: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(second["sent"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["sent"][0]["strategy"], "base", "{second}");
    assert!(second["bytes_sent"].as_u64().unwrap() < 20_000, "{second}");
    assert!(first["bytes_sent"].as_u64().unwrap() > 3_000_000, "{first}");
    assert_eq!(tree(&files_of(&c, "fra", "proj")), tree(&src));

    // A new file built on one the node holds travels as the chunks it lacks.
    let mut v2 = w.clone();
    v2[2_000_000..2_010_000].fill(9);
    std::fs::create_dir_all(src.join("models/v2")).unwrap();
    std::fs::write(src.join("models/v2/weights.bin"), &v2).unwrap();
    let (ok, out, err) = cli(&c, &["sync", "push", src.to_str().unwrap(), "--to", "fra:proj", "--json"]);
    assert!(ok, "third push failed: {err}");
    let third: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(third["sent"][0]["strategy"], "dedupe", "{third}");
    assert!(third["bytes_sent"].as_u64().unwrap() < 1_000_000, "{third}");
    assert_eq!(tree(&files_of(&c, "fra", "proj")), tree(&src));

    // A node that forgot what it last applied gets the full offer instead.
    for e in std::fs::read_dir(c.path("fra").join("data/sync")).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("remembered-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    std::fs::write(src.join("README.txt"), "edge models, v2\n".repeat(100)).unwrap();
    let (ok, out, err) = cli(&c, &["sync", "push", src.to_str().unwrap(), "--to", "fra:proj", "--json"]);
    assert!(ok, "push after the node forgot failed: {err}");
    let fourth: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(fourth["sent"].as_array().unwrap().len(), 1, "{fourth}");
    assert_eq!(tree(&files_of(&c, "fra", "proj")), tree(&src));

    // Pull it back somewhere else.
    let back = c.path("back");
    let (ok, _, err) = cli(&c, &["sync", "pull", "fra:proj", back.to_str().unwrap()]);
    assert!(ok, "pull failed: {err}");
    assert_eq!(tree(&back), tree(&src));

    // The server runs a job from fra to tyo.
    let (status, job) = api(&c.api, "POST", "/api/v1/sync", r#"{"source":"fra:proj","target":"tyo:mirror","mirror":true}"#);
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().unwrap();
    let done = wait_until(Duration::from_secs(30), "the sync job to finish", || {
        let j = c.get(&format!("/api/v1/sync/{id}"));
        (j["state"] != "running").then_some(j)
    });
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(tree(&files_of(&c, "tyo", "mirror")), tree(&src));

    // Bad jobs are refused with JSON errors.
    for (body, code) in [
        (r#"{"source":"fra:../etc","target":"tyo:x"}"#, 422),
        (r#"{"source":"fra:a","target":"nowhere:x"}"#, 404),
        (r#"{"source":"fra:a","target":"fra:b"}"#, 400),
        (r#"{"source":"fra","target":"tyo:x"}"#, 422),
    ] {
        let (status, v) = api(&c.api, "POST", "/api/v1/sync", body);
        assert_eq!(status, code, "{body}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
}

#[test]
fn data_port_rejects_hostile_input() {
    let c = two_agents();
    let port = c.data_port("fra");
    for (method, path, body) in [
        ("POST", "/sync/v1/offer?path=../../etc", &b"x"[..]),
        ("POST", "/sync/v1/offer?path=/etc", &b"x"[..]),
        ("POST", "/sync/v1/offer?path=ok", &b"not zstd"[..]),
        ("POST", "/sync/v1/offer?path=ok", &[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0][..]),
        ("PUT", "/sync/v1/transfers/../../x/chunks/0", &b"x"[..]),
        ("POST", "/sync/v1/transfers/0123456789abcdef0123456789abcdef/commit?chunks=1&blake3=00", &b""[..]),
        ("POST", "/sync/v1/pull/bundle?path=ok", &[0xff, 0xff, 0xff][..]),
    ] {
        let (status, text) = http(&port, method, path, body);
        assert!((400..500).contains(&status), "{method} {path}: {status} {text}");
        if status != 404 || text.starts_with('{') {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: non-JSON {text:?}"));
            assert!(v["error"]["message"].is_string(), "{v}");
        }
    }
    // The agent still works.
    let src = c.path("ok");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"still fine").unwrap();
    let (ok, _, err) = cli(&c, &["sync", "push", src.to_str().unwrap(), "--to", "fra:ok"]);
    assert!(ok, "{err}");
}

#[test]
fn push_resumes_after_the_receiver_is_killed() {
    let mut c = two_agents();
    let src = c.path("big");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("image.bin"), noise(10 << 20, 9)).unwrap();
    let push = c
        .cli_command(&["sync", "push", src.to_str().unwrap(), "--to", "fra:img", "--bwlimit", "2MiB", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staging = c.path("fra").join("data/sync/staging");
    wait_until(Duration::from_secs(30), "a few chunks to be staged", || {
        let n = std::fs::read_dir(&staging).ok()?.flatten().filter_map(|d| std::fs::read_dir(d.path()).ok()).flatten().flatten().count();
        (n >= 5).then_some(())
    });
    c.kill_agent("fra");
    c.restart_agent("fra");
    let out = push.wait_with_output().unwrap();
    assert!(out.status.success(), "push failed: {}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["chunk_uploads"].as_u64().unwrap() <= r["chunks"].as_u64().unwrap() + 1, "chunks were resent: {r}");
    assert_eq!(tree(&files_of(&c, "fra", "img")), tree(&src));
}

#[test]
fn bisync_merges_both_sides_changes() {
    let c = two_agents();
    let local = c.path("local");
    std::fs::create_dir_all(&local).unwrap();
    for (name, body) in [("a.txt", "a1\n"), ("c.txt", "line1\nline2\nline3\nline4\n"), ("d.txt", "d\n"), ("e.txt", "e\n")] {
        std::fs::write(local.join(name), body).unwrap();
    }
    let (ok, _, err) = cli(&c, &["sync", "bisync", local.to_str().unwrap(), "--with", "fra:bi", "--conflict", "merge"]);
    assert!(ok, "first bisync failed: {err}");
    let remote = files_of(&c, "fra", "bi");
    assert_eq!(tree(&remote), tree(&local));

    // Each side changes something; both change c.txt on different lines.
    std::fs::write(local.join("a.txt"), "a2\n").unwrap();
    std::fs::write(local.join("c.txt"), "LINE1\nline2\nline3\nline4\n").unwrap();
    std::fs::remove_file(local.join("e.txt")).unwrap();
    std::fs::write(remote.join("b.txt"), "b\n").unwrap();
    std::fs::write(remote.join("c.txt"), "line1\nline2\nline3\nLINE4\n").unwrap();
    std::fs::remove_file(remote.join("d.txt")).unwrap();

    let (ok, out, err) = cli(&c, &["sync", "bisync", local.to_str().unwrap(), "--with", "fra:bi", "--conflict", "merge", "--json"]);
    assert!(ok, "second bisync failed: {err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["pulled"], serde_json::json!(["b.txt"]), "{r}");
    assert_eq!(r["deleted_local"], serde_json::json!(["d.txt"]), "{r}");
    assert_eq!(r["conflicts"], serde_json::json!([["c.txt", "merged"]]), "{r}");
    assert_eq!(std::fs::read_to_string(local.join("c.txt")).unwrap(), "LINE1\nline2\nline3\nLINE4\n");
    assert_eq!(tree(&remote), tree(&local));
    let names: Vec<String> = tree(&local).into_iter().map(|(p, _)| p).collect();
    assert_eq!(names, ["a.txt", "b.txt", "c.txt"]);
}
