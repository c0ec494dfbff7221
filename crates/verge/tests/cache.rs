//! The edge cache on a real agent: the Redis protocol beside HTTP on one
//! store, bad input refused clearly, and a warm tier that survives `kill -9`
//! in the middle of writes without ever serving a torn entry.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// A RESP connection to the agent's listener.
struct Resp(TcpStream);

impl Resp {
    fn connect(c: &Cluster, node: &str) -> Resp {
        let path = c.path(&format!("{node}/data/cache/resp.addr"));
        let addr = wait_until(Duration::from_secs(20), "the RESP listener", || std::fs::read_to_string(&path).ok());
        let s = TcpStream::connect(addr.trim()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Resp(s)
    }

    /// Sends `args` as a RESP array and returns the raw reply.
    fn call(&mut self, args: &[&[u8]]) -> String {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend(format!("${}\r\n", a.len()).as_bytes());
            req.extend(*a);
            req.extend(b"\r\n");
        }
        self.raw(&req)
    }

    fn raw(&mut self, bytes: &[u8]) -> String {
        self.0.write_all(bytes).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let n = self.0.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

fn cache_agent(c: &mut Cluster) {
    c.agent_yaml = "  encryption: true\ncache:\n  resp_addr: \"127.0.0.1:0\"\n  max_value: 1KiB\n".into();
    c.add_agent(&FRANKFURT);
    c.wait_active(&["fra"]);
}

#[test]
fn redis_protocol_and_http_share_one_cache() {
    let mut c = Cluster::start();
    cache_agent(&mut c);
    let mut r = Resp::connect(&c, "fra");
    assert_eq!(r.call(&[b"PING"]), "+PONG\r\n");
    assert_eq!(r.call(&[b"SET", b"greeting", b"hello"]), "+OK\r\n");
    assert_eq!(r.call(&[b"GET", b"greeting"]), "$5\r\nhello\r\n");
    assert_eq!(r.call(&[b"DBSIZE"]), ":1\r\n");
    assert_eq!(r.call(&[b"EXISTS", b"greeting", b"nope"]), ":1\r\n");
    assert_eq!(r.call(&[b"TTL", b"greeting"]), ":-1\r\n");
    assert_eq!(r.call(&[b"EXPIRE", b"greeting", b"100"]), ":1\r\n");
    assert_eq!(r.call(&[b"TTL", b"greeting"]), ":100\r\n");
    assert_eq!(r.call(&[b"TTL", b"nope"]), ":-2\r\n");
    assert_eq!(r.call(&[b"SET", b"short", b"x", b"PX", b"50"]), "+OK\r\n");
    wait_until(Duration::from_secs(5), "the short entry to expire", || (r.call(&[b"GET", b"short"]) == "$-1\r\n").then_some(()));
    let info = r.call(&[b"INFO"]);
    assert!(info.contains("redis_version"), "{info}");
    // greeting is held with its 100 s TTL; short is gone.
    assert!(info.contains("db0:keys=1,expires=1"), "{info}");
    assert_eq!(r.call(&[b"INFO", b"Keyspace"]), "$34\r\n# Keyspace\r\ndb0:keys=1,expires=1\r\n\r\n");
    // Pipelined: three commands in one write, three replies.
    assert_eq!(
        r.raw(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$8\r\ngreeting\r\n*2\r\n$3\r\nDEL\r\n$8\r\ngreeting\r\n"),
        "+PONG\r\n$5\r\nhello\r\n:1\r\n"
    );
    assert_eq!(r.call(&[b"GET", b"greeting"]), "$-1\r\n");

    // What HTTP writes, RESP reads, and the other way round.
    let port = c.data_port("fra");
    let (status, _) = http(&port, "PUT", "/api/v1/cache/shared", br#"{"value":"from http","type":"ml_model"}"#);
    assert_eq!(status, 201);
    assert_eq!(r.call(&[b"GET", b"shared"]), "$9\r\nfrom http\r\n");
    assert_eq!(r.call(&[b"SET", b"back", b"from resp"]), "+OK\r\n");
    assert_eq!(http(&port, "GET", "/api/v1/cache/back", b""), (200, "from resp".to_string()));
    // HTTP caching: the version is the ETag (a client holding it gets 304),
    // the time left is max-age.
    assert_eq!(r.call(&[b"SET", b"cached", b"hello", b"EX", b"100"]), "+OK\r\n");
    let (status, head, _) = http_with_headers(&port, "GET", "/api/v1/cache/cached", "", b"");
    assert_eq!(status, 200, "{head}");
    let etag = head.lines().find_map(|l| l.strip_prefix("etag: ")).unwrap_or_else(|| panic!("no ETag in {head}")).to_string();
    assert!(head.to_ascii_lowercase().contains("cache-control: max-age="), "{head}");
    let (status, head, body) = http_with_headers(&port, "GET", "/api/v1/cache/cached", &format!("If-None-Match: {etag}\r\n"), b"");
    assert_eq!((status, body.as_str()), (304, ""), "{head}");
    let (status, _, body) = http_with_headers(&port, "GET", "/api/v1/cache/cached", "If-None-Match: \"1\"\r\n", b"");
    assert_eq!((status, body.as_str()), (200, "hello"));
    // One byte range: 206 and those bytes; If-Range with another version: all of it.
    let (status, head, body) = http_with_headers(&port, "GET", "/api/v1/cache/cached", "Range: bytes=1-3\r\n", b"");
    assert_eq!((status, body.as_str()), (206, "ell"), "{head}");
    assert!(head.contains("content-range: bytes 1-3/5"), "{head}");
    let (status, _, body) =
        http_with_headers(&port, "GET", "/api/v1/cache/cached", &format!("Range: bytes=-2\r\nIf-Range: {etag}\r\n"), b"");
    assert_eq!((status, body.as_str()), (206, "lo"));
    let (status, _, body) = http_with_headers(&port, "GET", "/api/v1/cache/cached", "Range: bytes=-2\r\nIf-Range: \"1\"\r\n", b"");
    assert_eq!((status, body.as_str()), (200, "hello"));
    let (status, head, body) = http_with_headers(&port, "GET", "/api/v1/cache/cached", "Range: bytes=9-\r\n", b"");
    assert_eq!(status, 416, "{head}");
    assert!(head.contains("content-range: bytes */5") && body.contains("bad_range"), "{head}{body}");

    // Bad input: clear errors, and the listener keeps serving.
    assert!(r.call(&[b"SET", b"big", &[b'v'; 2048]]).starts_with("-ERR values are at most 1024 bytes"));
    assert!(r.call(&[b"SET", &[b'k'; 2000], b"v"]).starts_with("-ERR keys are"));
    assert!(r.call(&[b"GET"]).starts_with("-ERR wrong number of arguments"));
    assert!(r.call(&[b"LPUSH", b"list", b"x"]).starts_with("-ERR unknown command 'LPUSH'"));
    assert!(r.call(&[b"SET", b"k", b"v", b"EX", b"soon"]).starts_with("-ERR invalid expire time"));
    let (status, body) = http(&port, "PUT", "/api/v1/cache/k?ttl=banana", b"x");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON {body:?}: {e}"));
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("bad_query")), "{body}");
    let mut bad = Resp::connect(&c, "fra");
    assert!(bad.raw(b"*1\r\n$99999999999\r\n").starts_with("-ERR Protocol error"));
    let mut closed = [0u8; 1];
    assert_eq!(bad.0.read(&mut closed).unwrap_or(0), 0, "the connection stays open after a protocol error");
    let mut bad = Resp::connect(&c, "fra");
    assert!(bad.raw(b"*2\r\n+GET\r\n").starts_with("-ERR Protocol error"));
    assert_eq!(Resp::connect(&c, "fra").call(&[b"PING"]), "+PONG\r\n");

    // Write-behind entries reach the disk before a clean exit.
    assert_eq!(Resp::connect(&c, "fra").call(&[b"SET", b"kept", b"across restarts"]), "+OK\r\n");
    c.stop_agent("fra");
    c.restart_agent("fra");
    let port = wait_until(Duration::from_secs(20), "fra to come back", || {
        (c.get("/api/v1/nodes/fra")["connected"] == true).then(|| c.data_port("fra"))
    });
    assert_eq!(http(&port, "GET", "/api/v1/cache/kept", b""), (200, "across restarts".to_string()));
}

#[test]
fn redis_writes_take_their_options_and_read_modify_writes_are_atomic() {
    let mut c = Cluster::start();
    cache_agent(&mut c);
    let mut r = Resp::connect(&c, "fra");
    assert_eq!(r.call(&[b"SET", b"lock", b"a", b"NX", b"PX", b"60000"]), "+OK\r\n");
    assert_eq!(r.call(&[b"SET", b"lock", b"b", b"NX"]), "$-1\r\n");
    assert_eq!(r.call(&[b"SET", b"absent", b"b", b"XX"]), "$-1\r\n");
    assert_eq!(r.call(&[b"EXISTS", b"absent"]), ":0\r\n");
    // XX with GET and KEEPTTL: the old value back, the old expiry kept.
    assert_eq!(r.call(&[b"SET", b"lock", b"c", b"XX", b"GET", b"KEEPTTL"]), "$1\r\na\r\n");
    let left: i64 = r.call(&[b"PTTL", b"lock"]).trim().trim_start_matches(':').parse().unwrap();
    assert!((1..=60_000).contains(&left), "{left}");
    assert_eq!(r.call(&[b"PERSIST", b"lock"]), ":1\r\n");
    assert_eq!(r.call(&[b"PERSIST", b"lock"]), ":0\r\n");
    assert_eq!(r.call(&[b"TTL", b"lock"]), ":-1\r\n");
    assert_eq!(r.call(&[b"PEXPIRE", b"lock", b"90000"]), ":1\r\n");
    assert_eq!(r.call(&[b"TTL", b"lock"]), ":90\r\n");
    // A plain SET clears the time to live.
    assert_eq!(r.call(&[b"SET", b"lock", b"d"]), "+OK\r\n");
    assert_eq!(r.call(&[b"PTTL", b"lock"]), ":-1\r\n");
    assert_eq!(r.call(&[b"MGET", b"lock", b"absent"]), "*2\r\n$1\r\nd\r\n$-1\r\n");
    // An absolute time already past: stored, and gone at once.
    assert_eq!(r.call(&[b"SET", b"old", b"x", b"EXAT", b"1000"]), "+OK\r\n");
    wait_until(Duration::from_secs(5), "the past-dated entry to expire", || (r.call(&[b"GET", b"old"]) == "$-1\r\n").then_some(()));
    assert!(r.call(&[b"SET", b"k", b"v", b"NX", b"XX"]).starts_with("-ERR syntax error"));
    assert!(r.call(&[b"SET", b"k", b"v", b"EX", b"10", b"PX", b"10"]).starts_with("-ERR syntax error"));
    assert!(r.call(&[b"SET", b"k", b"v", b"KEEPTTL", b"EX", b"10"]).starts_with("-ERR syntax error"));
    assert!(r.call(&[b"SET", b"k", b"v", b"EX"]).starts_with("-ERR syntax error"));
    assert!(r.call(&[b"SET", b"k", b"v", b"PXAT", b"0"]).starts_with("-ERR invalid expire time"));
    assert!(r.call(&[b"PTTL"]).starts_with("-ERR wrong number of arguments for 'pttl'"));

    // SET's older forms.
    assert_eq!(r.call(&[b"SETEX", b"session", b"100", b"s1"]), "+OK\r\n");
    assert_eq!(r.call(&[b"TTL", b"session"]), ":100\r\n");
    assert_eq!(r.call(&[b"PSETEX", b"session", b"5000", b"s2"]), "+OK\r\n");
    assert_eq!(r.call(&[b"TTL", b"session"]), ":5\r\n");
    assert!(r.call(&[b"SETEX", b"session", b"0", b"s3"]).starts_with("-ERR invalid expire time in 'setex'"));
    assert_eq!(r.call(&[b"SETNX", b"session", b"s4"]), ":0\r\n");
    assert_eq!(r.call(&[b"SETNX", b"fresh", b"f1"]), ":1\r\n");
    assert_eq!(r.call(&[b"GETSET", b"fresh", b"f2"]), "$2\r\nf1\r\n");
    assert_eq!(r.call(&[b"GETDEL", b"fresh"]), "$2\r\nf2\r\n");
    assert_eq!(r.call(&[b"GETDEL", b"fresh"]), "$-1\r\n");
    assert_eq!(r.call(&[b"TYPE", b"session"]), "+string\r\n");
    assert_eq!(r.call(&[b"TYPE", b"fresh"]), "+none\r\n");

    // Counters and appends keep the key's time to live.
    assert_eq!(r.call(&[b"INCR", b"hits"]), ":1\r\n");
    assert_eq!(r.call(&[b"EXPIRE", b"hits", b"100"]), ":1\r\n");
    assert_eq!(r.call(&[b"INCRBY", b"hits", b"41"]), ":42\r\n");
    assert_eq!(r.call(&[b"DECR", b"hits"]), ":41\r\n");
    assert_eq!(r.call(&[b"DECRBY", b"hits", b"-9"]), ":50\r\n");
    assert_eq!(r.call(&[b"TTL", b"hits"]), ":100\r\n");
    assert_eq!(r.call(&[b"GET", b"hits"]), "$2\r\n50\r\n");
    assert!(r.call(&[b"INCR", b"session"]).starts_with("-ERR value is not an integer"));
    assert!(r.call(&[b"INCRBY", b"hits", b"x"]).starts_with("-ERR value is not an integer"));
    assert_eq!(r.call(&[b"SET", b"max", b"9223372036854775807"]), "+OK\r\n");
    assert!(r.call(&[b"INCR", b"max"]).starts_with("-ERR increment or decrement would overflow"));
    assert_eq!(r.call(&[b"APPEND", b"log", b"a,"]), ":2\r\n");
    assert_eq!(r.call(&[b"APPEND", b"log", b"b"]), ":3\r\n");
    assert_eq!(r.call(&[b"STRLEN", b"log"]), ":3\r\n");
    assert_eq!(r.call(&[b"STRLEN", b"nothing"]), ":0\r\n");
    assert_eq!(r.call(&[b"UNLINK", b"log", b"nothing"]), ":1\r\n");

    // EXPIRE's conditions, as Redis 7: a key without a TTL expires never.
    assert_eq!(r.call(&[b"EXPIRE", b"log2", b"10"]), ":0\r\n");
    assert_eq!(r.call(&[b"SET", b"e", b"v"]), "+OK\r\n");
    assert_eq!(r.call(&[b"EXPIRE", b"e", b"100", b"XX"]), ":0\r\n");
    assert_eq!(r.call(&[b"EXPIRE", b"e", b"100", b"GT"]), ":0\r\n");
    assert_eq!(r.call(&[b"EXPIRE", b"e", b"100", b"NX"]), ":1\r\n");
    assert_eq!(r.call(&[b"EXPIRE", b"e", b"200", b"NX"]), ":0\r\n");
    assert_eq!(r.call(&[b"EXPIRE", b"e", b"50", b"GT"]), ":0\r\n");
    assert_eq!(r.call(&[b"EXPIRE", b"e", b"200", b"gt"]), ":1\r\n");
    assert_eq!(r.call(&[b"EXPIRE", b"e", b"300", b"LT"]), ":0\r\n");
    assert_eq!(r.call(&[b"PEXPIRE", b"e", b"150000", b"LT", b"XX"]), ":1\r\n");
    assert_eq!(r.call(&[b"TTL", b"e"]), ":150\r\n");
    assert!(r.call(&[b"EXPIRE", b"e", b"1", b"NX", b"GT"]).starts_with("-ERR NX and XX, GT or LT"));
    assert!(r.call(&[b"EXPIRE", b"e", b"1", b"GT", b"LT"]).starts_with("-ERR GT and LT"));
    assert!(r.call(&[b"EXPIRE", b"e", b"1", b"SOON"]).starts_with("-ERR Unsupported option SOON"));
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1000;
    assert_eq!(r.call(&[b"EXPIREAT", b"e", at.to_string().as_bytes()]), ":1\r\n");
    let left: i64 = r.call(&[b"TTL", b"e"]).trim().trim_start_matches(':').parse().unwrap();
    assert!((990..=1000).contains(&left), "{left}");
    // A time already past deletes the key.
    assert_eq!(r.call(&[b"PEXPIREAT", b"e", b"1000"]), ":1\r\n");
    assert_eq!(r.call(&[b"EXISTS", b"e"]), ":0\r\n");
    assert_eq!(r.call(&[b"SELECT", b"0"]), "+OK\r\n");
    assert!(r.call(&[b"SELECT", b"1"]).starts_with("-ERR DB index is out of range"));

    // Eight clients race for one lock: exactly one gets it; and each
    // increments one counter 50 times: no increment is lost.
    let addr = r.0.peer_addr().unwrap();
    let winners: usize = std::thread::scope(|s| {
        let racers: Vec<_> = (0..8u8)
            .map(|i| {
                s.spawn(move || {
                    let mut me = Resp(TcpStream::connect(addr).unwrap());
                    me.0.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let won = usize::from(me.call(&[b"SET", b"race", &[b'0' + i], b"NX"]) == "+OK\r\n");
                    for _ in 0..50 {
                        assert!(me.call(&[b"INCR", b"counter"]).starts_with(':'));
                    }
                    won
                })
            })
            .collect();
        racers.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert_eq!(winners, 1);
    assert_eq!(r.call(&[b"GET", b"counter"]), "$3\r\n400\r\n");

    // KEYS and SCAN list the node's keys by Redis's glob patterns.
    for i in 1..=12 {
        assert_eq!(r.call(&[b"SET", format!("scan:{i}").as_bytes(), b"v"]), "+OK\r\n");
    }
    let sorted = |mut keys: Vec<String>| {
        keys.sort();
        keys
    };
    let expected: Vec<String> = sorted((1..=12).map(|i| format!("scan:{i}")).collect());
    assert_eq!(sorted(bulks(&r.call(&[b"KEYS", b"scan:*"]), 1)), expected);
    let (mut cursor, mut found) = (String::from("0"), Vec::new());
    loop {
        let reply = r.call(&[b"SCAN", cursor.as_bytes(), b"MATCH", b"scan:1*", b"COUNT", b"3"]);
        assert!(reply.starts_with("*2\r\n$"), "{reply}");
        cursor = reply.split("\r\n").nth(2).unwrap().to_string();
        found.extend(bulks(&reply, 4));
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(sorted(found), ["scan:1", "scan:10", "scan:11", "scan:12"]);
    assert!(r.call(&[b"SCAN", b"0", b"TYPE", b"hash"]).ends_with("*0\r\n"));
    assert!(r.call(&[b"SCAN", b"next"]).starts_with("-ERR invalid cursor"));
    assert!(r.call(&[b"SCAN", b"0", b"COUNT", b"0"]).starts_with("-ERR syntax error"));
    assert!(r.call(&[b"SCAN", b"0", b"MATCH"]).starts_with("-ERR syntax error"));

    // FLUSHDB drops every key on the node.
    assert!(r.call(&[b"FLUSHDB", b"LATER"]).starts_with("-ERR syntax error"));
    assert_eq!(r.call(&[b"FLUSHDB", b"async"]), "+OK\r\n");
    assert_eq!(r.call(&[b"DBSIZE"]), ":0\r\n");
    assert_eq!(r.call(&[b"MGET", b"counter", b"race", b"hits"]), "*3\r\n$-1\r\n$-1\r\n$-1\r\n");
    assert_eq!(r.call(&[b"KEYS", b"*"]), "*0\r\n");
}

/// The bulk strings of a RESP reply from its `skip`-th line on (an array of
/// bulk strings: every other line is a value).
fn bulks(reply: &str, skip: usize) -> Vec<String> {
    reply.split("\r\n").skip(skip).filter(|l| !l.is_empty()).skip(1).step_by(2).map(str::to_string).collect()
}

/// The value each key must have: never anything else.
fn value_of(i: u32) -> String {
    format!("value-{i}-").repeat(20)
}

#[test]
fn kill_9_during_writes_never_serves_a_torn_entry() {
    let mut c = Cluster::start();
    cache_agent(&mut c);
    let port = c.data_port("fra");
    let writer = {
        let port = port.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for i in 0..100_000u32 {
                let body = format!("{{\"value\":\"{}\"}}", value_of(i));
                match try_http(&port, "PUT", &format!("/api/v1/cache/k{i}"), body.as_bytes()) {
                    Ok((201, _)) => acked.push(i),
                    _ => break,
                }
            }
            acked
        })
    };
    let warm = c.path("fra/data/cache/warm");
    wait_until(Duration::from_secs(30), "some entries on disk", || (std::fs::read_dir(&warm).ok()?.count() >= 30).then_some(()));
    c.kill_agent("fra");
    let acked = writer.join().unwrap();
    assert!(!acked.is_empty());
    c.restart_agent("fra");
    let port = wait_until(Duration::from_secs(20), "fra to come back", || {
        (c.get("/api/v1/nodes/fra")["connected"] == true).then(|| c.data_port("fra"))
    });
    let last = *acked.last().unwrap();
    for i in 0..=last + 3 {
        let (status, body) = http(&port, "GET", &format!("/api/v1/cache/k{i}"), b"");
        match status {
            200 => assert_eq!(body, value_of(i), "k{i} served torn or wrong"),
            404 => assert!(!acked.contains(&i), "acknowledged k{i} was lost"),
            other => panic!("k{i}: {other} {body}"),
        }
    }
}

/// What a test origin holds: bodies stored by `PUT`, by path.
type Stored = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>;

/// A slow origin on loopback: after 300 ms, answers a stored body, 404 for
/// `/objects/missing`, else `origin:PATH`; stores `PUT` bodies; counts GETs.
fn slow_origin() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>, Stored) {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/objects/", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stored = Stored::default();
    let (seen, store) = (count.clone(), stored.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (seen, store) = (seen.clone(), store.clone());
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let mut length = 0;
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    header.clear();
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let mut parts = request.split_whitespace();
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("").to_string());
                let path = target.split('?').next().unwrap_or("").to_string();
                let reply = if method == "PUT" {
                    store.lock().unwrap().insert(path, String::from_utf8_lossy(&body).into_owned());
                    "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_string()
                } else {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(300));
                    match store.lock().unwrap().get(&path).cloned() {
                        _ if path == "/objects/missing" => {
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                        }
                        stored => {
                            let body = stored.unwrap_or_else(|| format!("origin:{path}"));
                            format!(
                                "HTTP/1.1 200 OK\r\nx-verge-type: ml_model\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        }
                    }
                };
                let mut conn = conn;
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
    (url, count, stored)
}

#[test]
fn writes_go_through_or_behind_to_the_origin_and_policies_are_selectable() {
    let (origin, _, stored) = slow_origin();
    let mut c = Cluster::start();
    c.agent_yaml = format!("cache:\n  origin: \"{origin}\"\n  origin_writes: through\n");
    c.add_agent(&FRANKFURT);
    c.agent_yaml = format!("cache:\n  origin: \"{origin}\"\n  origin_writes: behind\n  policy: lru\n");
    c.add_agent(&TOKYO);
    c.wait_active(&["fra", "tyo"]);
    let fra = c.data_port("fra");
    assert_eq!(http(&fra, "PUT", "/api/v1/cache/doc/a", br#"{"value":"through"}"#).0, 201);
    assert_eq!(stored.lock().unwrap().get("/objects/doc/a").map(String::as_str), Some("through"), "not at the origin when acknowledged");
    let tyo = c.data_port("tyo");
    assert_eq!(http(&tyo, "PUT", "/api/v1/cache/doc/b", br#"{"value":"behind"}"#).0, 201);
    wait_until(Duration::from_secs(10), "the write-behind to reach the origin", || {
        (stored.lock().unwrap().get("/objects/doc/b").map(String::as_str) == Some("behind")).then_some(())
    });
    let (_, stats) = http(&tyo, "GET", "/api/v1/cache", b"");
    assert!(stats.contains("\"policy\":\"lru\""), "{stats}");
}

#[test]
fn misses_read_through_the_origin_once_for_many_clients() {
    let (origin, fetches, _) = slow_origin();
    let mut c = Cluster::start();
    c.agent_yaml = format!("cache:\n  origin: \"{origin}\"\n");
    c.add_agent(&FRANKFURT);
    c.wait_active(&["fra"]);
    let port = c.data_port("fra");
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let port = port.clone();
            std::thread::spawn(move || http(&port, "GET", "/api/v1/cache/models/m1", b""))
        })
        .collect();
    for t in clients {
        assert_eq!(t.join().unwrap(), (200, "origin:/objects/models/m1".to_string()));
    }
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1, "concurrent misses were not coalesced");
    assert_eq!(http(&port, "GET", "/api/v1/cache/models/m1", b"").0, 200);
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1, "a cached key went to the origin");
    assert_eq!(http(&port, "GET", "/api/v1/cache/missing", b"").0, 404);
    let (_, stats) = http(&port, "GET", "/api/v1/cache", b"");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["originFetches"], 2, "{stats}");
    assert_eq!(stats["hotKeys"][0][0], "models/m1", "{stats}");
    let (status, metrics) = http(&port, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert!(metrics.contains("verge_cache_origin_fetches_total 2"), "{metrics}");
    assert!(metrics.contains("verge_cache_hot_key_requests{key=\"models/m1\"} 13"), "{metrics}");
}

#[test]
fn the_server_fans_writes_invalidations_and_warm_ups_out_to_nodes() {
    let (origin, fetches, _) = slow_origin();
    let mut c = Cluster::start();
    c.agent_yaml = format!("cache:\n  origin: \"{origin}\"\n");
    c.add_agent(&FRANKFURT);
    c.add_agent(&TOKYO);
    c.wait_active(&["fra", "tyo"]);
    let cli = |args: &[&str]| {
        let (ok, out, err) = c.cli(args);
        assert!(ok, "verge {args:?}: {err}");
        out
    };
    let put: serde_json::Value = serde_json::from_str(&cli(&["cache", "put", "cfg/site", "v1", "--type", "app_data", "--json"])).unwrap();
    assert_eq!(put["nodes"]["fra"], "stored", "{put}");
    assert_eq!(put["nodes"]["tyo"], "stored", "{put}");
    let version = put["version"].as_u64().unwrap();
    assert_eq!(cli(&["cache", "get", "cfg/site", "--node", "tyo"]), "v1");

    // Through the server as on the node: a byte range, a conditional read.
    let path = "/api/v1/cache/cfg/site?node=tyo";
    let (status, head, body) = http_with_headers(&c.api, "GET", path, "Range: bytes=1-1\r\n", b"");
    assert_eq!((status, body.as_str()), (206, "1"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-range: bytes 1-1/2") && head.contains("x-verge-node: tyo"), "{head}");
    let etag = head.lines().find_map(|l| l.strip_prefix("etag: ")).unwrap_or_else(|| panic!("no ETag: {head}")).to_string();
    let (status, _, body) = http_with_headers(&c.api, "GET", path, &format!("If-None-Match: {etag}\r\n"), b"");
    assert_eq!((status, body.as_str()), (304, ""));
    let (status, body) = http(&c.api, "PUT", "/api/v1/cache/too-big", &vec![b'x'; (64 << 20) + 1]);
    assert!(status == 413 && body.contains("payload_too_large"), "{status} {body}");

    // A value larger than the API's 1 MiB JSON limit (a model, an image)
    // goes through the server whole.
    let model: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let file = c.path("model.bin");
    std::fs::write(&file, &model).unwrap();
    cli(&["cache", "put", "models/big", "--file", file.to_str().unwrap(), "--nodes", "fra"]);
    let out = c.cli_command(&["cache", "get", "models/big", "--node", "fra"]).output().unwrap();
    assert!(out.status.success() && out.stdout == model, "3 MiB read back: {} bytes", out.stdout.len());
    let (ok, _, err) = c.cli(&["cache", "get", ""]);
    assert!(!ok && err.contains("bad key"), "{err}");

    // A node's keys, listed through the server, step by step.
    for i in 0..25 {
        cli(&["cache", "put", &format!("cfg/n{i:02}"), "x", "--nodes", "tyo"]);
    }
    let listed = cli(&["cache", "keys", "--node", "tyo", "--match", "cfg/n1*"]);
    assert_eq!(listed, (10..20).map(|i| format!("cfg/n{i}\n")).collect::<String>());
    let all: Vec<String> = serde_json::from_str(&cli(&["cache", "keys", "--node", "tyo", "--json"])).unwrap();
    assert_eq!(all.len(), 26, "{all:?}");
    let (status, step) = api(&c.api, "GET", "/api/v1/nodes/tyo/cache/keys?count=10", "");
    assert_eq!(status, 200, "{step}");
    assert!(step["cursor"].as_str().is_some_and(|c| c != "0") && step["keys"].as_array().is_some_and(|k| !k.is_empty()), "{step}");
    assert_eq!(api(&c.api, "GET", "/api/v1/nodes/tyo/cache/keys?cursor=x", "").0, 400);
    assert_eq!(api(&c.api, "GET", "/api/v1/nodes/nowhere/cache/keys", "").0, 409);

    // A write to some nodes makes the others drop their older copies
    // before it is acknowledged.
    cli(&["cache", "put", "cfg/pinned", "a"]);
    let put: serde_json::Value = serde_json::from_str(&cli(&["cache", "put", "cfg/pinned", "b", "--nodes", "fra", "--json"])).unwrap();
    assert_eq!(put["nodes"], serde_json::json!({"fra": "stored"}), "{put}");
    assert_eq!(put["invalidated"], serde_json::json!({"tyo": true}), "{put}");
    assert_eq!(cli(&["cache", "keys", "--node", "tyo", "--match", "cfg/pinned"]), "");
    let table = cli(&["cache", "put", "cfg/pinned", "c", "--nodes", "fra"]);
    assert!(table.lines().any(|l| l.starts_with("tyo") && l.contains("held no copy")), "{table}");

    // A replica older than what a node holds does not replace it.
    let fra = c.data_port("fra");
    let stale = format!("/api/v1/cache/cfg/site?version={}", version - 1);
    assert_eq!(http(&fra, "PUT", &stale, b"{\"value\":\"old\"}").0, 201);
    assert_eq!(http(&fra, "GET", "/api/v1/cache/cfg/site", b"").1, "v1");

    // Local invalidation drops one node's copy; global (strong) every copy.
    let out: serde_json::Value =
        serde_json::from_str(&cli(&["cache", "rm", "cfg/site", "--scope", "local", "--node", "fra", "--json"])).unwrap();
    assert_eq!(out["acknowledged"]["fra"], true, "{out}");
    assert_eq!(http(&fra, "GET", "/api/v1/cache/cfg/site", b"").0, 200, "read-through should refill from the origin");
    assert_eq!(http(&fra, "GET", "/api/v1/cache/cfg/site", b"").1, "origin:/objects/cfg/site");
    let out: serde_json::Value = serde_json::from_str(&cli(&["cache", "rm", "cfg/site", "--json"])).unwrap();
    assert_eq!(out["acknowledged"].as_object().unwrap().len(), 2, "{out}");
    assert!(out["silent"].as_array().unwrap().is_empty(), "{out}");
    let (status, v) = api(&c.api, "DELETE", "/api/v1/cache/x?scope=local", "");
    assert_eq!(status, 400, "{v}");

    // Warm-ups read through the origin before anyone asks; they are not
    // clients' requests, so no node counts a miss for them.
    let before = fetches.load(std::sync::atomic::Ordering::SeqCst);
    let stats = || -> serde_json::Value { serde_json::from_str(&cli(&["cache", "stats", "--json"])).unwrap() };
    let misses_before = stats()["tyo"]["misses"].as_u64().unwrap();
    cli(&["cache", "prewarm", "models/a", "models/b"]);
    wait_until(Duration::from_secs(20), "both nodes to pre-warm both keys", || {
        let stats = stats();
        (stats["fra"]["prewarmed"] == 2 && stats["tyo"]["prewarmed"] == 2).then_some(())
    });
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst) - before, 4);
    assert_eq!(stats()["tyo"]["misses"].as_u64().unwrap(), misses_before, "a warm-up counted as a miss");
    // Without --json, a table: a line per node, the adaptive policy with
    // the candidate it serves with.
    let table = cli(&["cache", "stats"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NODE") && lines[0].contains("HIT RATIO"), "{table}");
    assert!(lines[1].starts_with("fra ") && lines[2].starts_with("tyo "), "{table}");
    assert!(lines[1].contains("adaptive: "), "{table}");
    let tyo = c.data_port("tyo");
    assert_eq!(http(&tyo, "GET", "/api/v1/cache/models/b", b"").1, "origin:/objects/models/b");
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst) - before, 4, "a pre-warmed key went to the origin again");

    // A node that is down when a key is invalidated drops the key when it
    // connects again, instead of serving the old value.
    cli(&["cache", "put", "cfg/late", "v1"]);
    c.stop_agent("tyo");
    wait_until(Duration::from_secs(20), "the server to see tyo disconnect", || {
        (c.get("/api/v1/nodes/tyo")["connected"] == false).then_some(())
    });
    let (ok, out, _) = c.cli(&["cache", "rm", "cfg/late", "--json"]);
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["acknowledged"]["fra"], true, "{out}");
    assert_eq!(out["queued"], serde_json::json!(["tyo"]), "{out}");
    // Not confirmed while tyo's lease (2 s) still runs, as it almost
    // always does here; confirmed once it ran out on a slow machine.
    let silent = if ok { serde_json::json!([]) } else { serde_json::json!(["tyo"]) };
    assert_eq!(out["silent"], silent, "{out}");
    // A write it misses makes it drop its older copy too.
    let (ok, put, err) = c.cli(&["cache", "put", "cfg/n05", "new", "--json"]);
    assert!(ok, "{err}");
    let put: serde_json::Value = serde_json::from_str(&put).unwrap();
    assert_eq!(put["nodes"], serde_json::json!({"fra": "stored"}), "{put}");
    assert_eq!(put["queued"], serde_json::json!(["tyo"]), "{put}");
    assert_eq!(c.get("/api/v1/nodes/tyo")["cacheBacklog"], serde_json::json!({"keys": 2, "dropAll": false}));
    let (_, status, _) = c.cli(&["node", "status", "tyo"]);
    assert!(status.contains("2 invalidated keys to drop when it connects"), "{status}");
    c.restart_agent("tyo");
    wait_until(Duration::from_secs(30), "tyo to drop the key invalidated while it was down", || {
        let (ok, keys, _) = c.cli(&["cache", "keys", "--node", "tyo", "--match", "cfg/*"]);
        (ok && !keys.lines().any(|k| k == "cfg/late")).then_some(())
    });
    wait_until(Duration::from_secs(30), "the server to forget what tyo acknowledged", || {
        (c.get("/api/v1/nodes/tyo")["cacheBacklog"]["keys"] == 0).then_some(())
    });
    let (ok, keys, err) = c.cli(&["cache", "keys", "--node", "tyo", "--match", "cfg/n0*"]);
    assert!(ok && keys.lines().count() == 9 && !keys.contains("cfg/n05"), "tyo drops cfg/n05, keeps the others: {keys}{err}");

    // A node removed from the fleet is in no invalidation's list until it
    // joins again: it then drops everything it cached before, which the
    // fleet may have changed meanwhile (here cfg/n01).
    c.stop_agent("tyo");
    let (status, v) = api(&c.api, "DELETE", "/api/v1/nodes/tyo", "");
    assert_eq!(status, 200, "{v}");
    let (ok, _, err) = c.cli(&["cache", "put", "cfg/n01", "changed while tyo was out of the fleet"]);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(c.path("tyo").join("data").join("tls")).unwrap();
    c.restart_agent("tyo");
    wait_until(Duration::from_secs(30), "tyo to join again and drop what it cached before", || {
        let (ok, keys, _) = c.cli(&["cache", "keys", "--node", "tyo", "--match", "cfg/*"]);
        (ok && keys.trim().is_empty()).then_some(())
    });
    wait_until(Duration::from_secs(30), "the server to record that tyo caught up", || {
        (c.get("/api/v1/nodes/tyo")["cacheBacklog"]["dropAll"] == false).then_some(())
    });
}
