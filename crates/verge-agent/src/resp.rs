//! The edge cache over the Redis protocol (RESP2), so `redis-cli`,
//! `redis-benchmark` and Redis client libraries work against an agent:
//! strings with a time to live (the commands in `COMMANDS`: `GET SET`
//! with Redis 7's options, `INCR`, `APPEND`, `EXPIRE` with its conditions,
//! `SCAN`, …) and the `CONFIG`/`COMMAND`/`CLIENT`/`SELECT` calls clients
//! make on connect. Writes are write-behind, as Redis without an append-only file:
//! answered from memory, on disk shortly after.
//!
//! Pipelined requests are parsed straight from the read buffer and
//! answered in one write. Every length is bounded before anything is
//! allocated; a malformed request gets `-ERR Protocol error` and the
//! connection is closed, as Redis does.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::edgecache::{now_ms, EdgeCache, Entry};

/// Most arguments in one command.
const MAX_ARGS: usize = 1 << 20;
/// Longest inline command or header line.
const MAX_LINE: usize = 64 << 10;

/// One parse step over the bytes received so far.
#[derive(Debug, PartialEq)]
pub enum Parsed<'a> {
    /// More bytes are needed.
    Incomplete,
    /// A command's arguments and how many bytes it took.
    Command(Vec<&'a [u8]>, usize),
    /// The bytes are not RESP.
    Invalid(String),
}

fn line(buf: &[u8], from: usize) -> Result<Option<(&[u8], usize)>, String> {
    match buf.get(from..).and_then(|rest| rest.windows(2).position(|w| w == b"\r\n")) {
        Some(n) if n > MAX_LINE => Err("line too long".into()),
        Some(n) => Ok(Some((&buf[from..from + n], from + n + 2))),
        None if buf.len() - from.min(buf.len()) > MAX_LINE => Err("line too long".into()),
        None => Ok(None),
    }
}

fn number(digits: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("invalid length {:?}", String::from_utf8_lossy(digits)))
}

/// Parses one command from the front of `buf`: a RESP array of bulk
/// strings, or an inline command (`PING\r\n`). Bulk strings longer than
/// `max_bulk` are refused before they are buffered.
pub fn parse(buf: &[u8], max_bulk: usize) -> Parsed<'_> {
    let Some(&first) = buf.first() else { return Parsed::Incomplete };
    if first != b'*' {
        return match line(buf, 0) {
            Ok(Some((l, end))) => Parsed::Command(l.split(|b| *b == b' ').filter(|w| !w.is_empty()).collect(), end),
            Ok(None) => Parsed::Incomplete,
            Err(e) => Parsed::Invalid(e),
        };
    }
    let (head, mut at) = match line(buf, 1) {
        Ok(Some(x)) => x,
        Ok(None) => return Parsed::Incomplete,
        Err(e) => return Parsed::Invalid(e),
    };
    let count = match number(head) {
        Ok(n) if (0..=MAX_ARGS as i64).contains(&n) => n as usize,
        Ok(n) => return Parsed::Invalid(format!("invalid multibulk length {n}")),
        Err(e) => return Parsed::Invalid(e),
    };
    let mut args = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        match buf.get(at) {
            None => return Parsed::Incomplete,
            Some(b'$') => {}
            Some(&b) => return Parsed::Invalid(format!("expected '$', got '{}'", b as char)),
        }
        let (len, start) = match line(buf, at + 1) {
            Ok(Some(x)) => x,
            Ok(None) => return Parsed::Incomplete,
            Err(e) => return Parsed::Invalid(e),
        };
        let len = match number(len) {
            Ok(n) if n >= 0 && (n as u64) <= max_bulk as u64 => n as usize,
            Ok(n) => return Parsed::Invalid(format!("invalid bulk length {n} (at most {max_bulk})")),
            Err(e) => return Parsed::Invalid(e),
        };
        let end = start + len;
        if buf.len() < end + 2 {
            return Parsed::Incomplete;
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Parsed::Invalid("bulk string not followed by CRLF".into());
        }
        args.push(&buf[start..end]);
        at = end + 2;
    }
    Parsed::Command(args, at)
}

fn bulk(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'$');
    out.extend(v.len().to_string().as_bytes());
    out.extend(b"\r\n");
    out.extend(v);
    out.extend(b"\r\n");
}

fn int(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    out.extend(n.to_string().as_bytes());
    out.extend(b"\r\n");
}

fn err(out: &mut Vec<u8>, msg: &str) {
    out.extend(b"-ERR ");
    out.extend(msg.replace(['\r', '\n'], " ").as_bytes());
    out.extend(b"\r\n");
}

const NIL: &[u8] = b"$-1\r\n";
const OK: &[u8] = b"+OK\r\n";

/// What to do after a command.
enum Next {
    Continue,
    Close,
}

fn utf8(arg: &[u8]) -> Option<&str> {
    std::str::from_utf8(arg).ok()
}

/// The commands served, with their arity as Redis counts it (the command
/// name included): `n`, exactly n words; `-n`, at least n.
const COMMANDS: &[(&str, i32)] = &[
    ("PING", -1),
    ("ECHO", 2),
    ("GET", 2),
    ("MGET", -2),
    ("SET", -3),
    ("SETEX", 4),
    ("PSETEX", 4),
    ("SETNX", 3),
    ("GETSET", 3),
    ("GETDEL", 2),
    ("APPEND", 3),
    ("STRLEN", 2),
    ("INCR", 2),
    ("DECR", 2),
    ("INCRBY", 3),
    ("DECRBY", 3),
    ("DEL", -2),
    ("UNLINK", -2),
    ("EXISTS", -2),
    ("TYPE", 2),
    ("DBSIZE", 1),
    ("KEYS", 2),
    ("SCAN", -2),
    ("FLUSHDB", -1),
    ("FLUSHALL", -1),
    ("EXPIRE", -3),
    ("PEXPIRE", -3),
    ("EXPIREAT", -3),
    ("PEXPIREAT", -3),
    ("PERSIST", 2),
    ("TTL", 2),
    ("PTTL", 2),
    ("INFO", -1),
    ("QUIT", -1),
    ("SELECT", 2),
    ("CLIENT", -1),
    ("CONFIG", -1),
    ("COMMAND", -1),
];

/// Runs one command, appending the reply to `out`.
async fn execute(cache: &Arc<EdgeCache>, args: &[&[u8]], out: &mut Vec<u8>) -> Next {
    let Some(first) = args.first() else { return Next::Continue };
    let Some(&(name, arity)) = COMMANDS.iter().find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(first)) else {
        err(out, &format!("unknown command '{}'", String::from_utf8_lossy(first)));
        return Next::Continue;
    };
    let n = args.len() as i32;
    if (arity >= 0 && n != arity) || n < -arity || (name == "PING" && n > 2) {
        err(out, &format!("wrong number of arguments for '{}' command", name.to_ascii_lowercase()));
        return Next::Continue;
    }
    match name {
        "PING" if n == 1 => out.extend(b"+PONG\r\n"),
        "PING" | "ECHO" => bulk(out, args[1]),
        "GET" => get(cache, args[1], out).await,
        "MGET" => {
            out.extend(format!("*{}\r\n", n - 1).as_bytes());
            for key in &args[1..] {
                get(cache, key, out).await;
            }
        }
        "SET" => match set_options(&args[3..]) {
            Ok(o) => set(cache, args[1], args[2], o, out).await,
            Err(e) => err(out, e),
        },
        "SETEX" | "PSETEX" => {
            let unit = if name == "SETEX" { 1000 } else { 1 };
            match utf8(args[2]).and_then(|v| v.parse::<i64>().ok()).filter(|v| *v > 0) {
                Some(t) => {
                    let o = SetOptions { expiry: SetExpiry::In((t as u64).saturating_mul(unit)), ..SetOptions::PLAIN };
                    set(cache, args[1], args[3], o, out).await;
                }
                None => err(out, &format!("invalid expire time in '{}' command", name.to_ascii_lowercase())),
            }
        }
        "SETNX" => match write(cache, args[1], args[2], SetOptions { only_if_present: Some(false), ..SetOptions::PLAIN }).await {
            Ok((stored, _)) => int(out, i64::from(stored)),
            Err(e) => err(out, &e),
        },
        "GETSET" => set(cache, args[1], args[2], SetOptions { get: true, ..SetOptions::PLAIN }, out).await,
        "GETDEL" => match utf8(args[1]) {
            Some(key) => {
                cache.observe(key);
                let k = key.to_string();
                match cache.blocking(move |c| c.take(&k)).await.flatten() {
                    Some(e) => bulk(out, &e.value),
                    None => out.extend(NIL),
                }
            }
            None => out.extend(NIL),
        },
        "APPEND" => {
            let tail = args[2].to_vec();
            let appended = update(cache, args[1], move |old| {
                let mut v = old.map_or_else(Vec::new, |e| e.value.to_vec());
                v.extend_from_slice(&tail);
                Ok(v)
            })
            .await;
            match appended {
                Ok(v) => int(out, v.len() as i64),
                Err(e) => err(out, &e),
            }
        }
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let by = if n == 3 { utf8(args[2]).and_then(|v| v.parse::<i64>().ok()) } else { Some(1) };
            let by = match (by, name.starts_with('D')) {
                (Some(by), false) => Some(by),
                (Some(by), true) => by.checked_neg(),
                (None, _) => None,
            };
            match by {
                Some(by) => match update(cache, args[1], move |old| add(old, by)).await {
                    // What `add` wrote parses back.
                    Ok(v) => int(out, utf8(&v).and_then(|v| v.parse().ok()).unwrap_or_default()),
                    Err(e) => err(out, &e),
                },
                None => err(out, "value is not an integer or out of range"),
            }
        }
        "STRLEN" => match utf8(args[1]) {
            Some(key) => int(out, lookup(cache, key).await.map_or(0, |e| e.value.len() as i64)),
            None => int(out, 0),
        },
        "TYPE" => match utf8(args[1]) {
            Some(key) if lookup(cache, key).await.is_some() => out.extend(b"+string\r\n"),
            _ => out.extend(b"+none\r\n"),
        },
        "DEL" | "UNLINK" => {
            // Removal checks the disk tiers.
            let keys: Vec<String> = args[1..].iter().filter_map(|k| utf8(k).map(str::to_string)).collect();
            int(out, cache.blocking(move |c| keys.iter().filter(|k| c.remove(k)).count()).await.unwrap_or(0) as i64);
        }
        "EXISTS" => {
            let mut found = 0;
            for k in args[1..].iter().filter_map(|k| utf8(k)) {
                found += i64::from(lookup(cache, k).await.is_some());
            }
            int(out, found);
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
            let unit = if name.starts_with('P') { 1 } else { 1000 };
            expire(cache, args, unit, name.ends_with("AT"), out).await
        }
        "PERSIST" => match utf8(args[1]) {
            // Only a key with a time to live changes.
            Some(key) => {
                let k = key.to_string();
                int(out, i64::from(cache.blocking(move |c| c.expire(&k, |before| before.map(|_| None))).await.flatten() == Some(true)))
            }
            None => int(out, 0),
        },
        "TTL" => ttl(cache, args[1], 1000, out).await,
        "PTTL" => ttl(cache, args[1], 1, out).await,
        "DBSIZE" => int(out, cache.blocking(|c| c.key_count()).await.unwrap_or(0) as i64),
        "KEYS" => {
            let pattern = args[1].to_vec();
            let keys = cache.blocking(move |c| every_key(c, &pattern)).await.unwrap_or_default();
            array(out, &keys);
        }
        "SCAN" => scan(cache, &args[1..], out).await,
        "FLUSHDB" | "FLUSHALL" => match &args[1..] {
            // Always synchronous: done when answered.
            [] => flush(cache, out).await,
            [mode] if mode.eq_ignore_ascii_case(b"SYNC") || mode.eq_ignore_ascii_case(b"ASYNC") => flush(cache, out).await,
            _ => err(out, "syntax error"),
        },
        "INFO" => {
            // Counting the keys walks the write-behind queue.
            let asked: Vec<Vec<u8>> = args[1..].iter().map(|a| a.to_vec()).collect();
            bulk(out, cache.blocking(move |c| info(c, &asked)).await.unwrap_or_default().as_bytes());
        }
        "QUIT" => {
            out.extend(OK);
            return Next::Close;
        }
        "SELECT" if args[1] == b"0" => out.extend(OK),
        "SELECT" => err(out, "DB index is out of range"),
        "CLIENT" => out.extend(OK),
        _ => out.extend(b"*0\r\n"),
    }
    Next::Continue
}

/// Keys a step of `SCAN` covers when the client does not say (Redis's default).
const SCAN_COUNT: usize = 10;
/// Most files one step of `SCAN` covers, whatever the client asks.
const MAX_SCAN_COUNT: usize = 100_000;

/// `KEYS pattern`: every key of the node that matches, from a full scan.
fn every_key(cache: &EdgeCache, pattern: &[u8]) -> Vec<String> {
    let (mut keys, mut cursor) = (Vec::new(), 0);
    loop {
        let (next, step) = cache.scan(cursor, MAX_SCAN_COUNT, Some(pattern), now_ms());
        keys.extend(step);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`: one step over
/// the node's keys (see [`EdgeCache::scan`]); every value is a string.
async fn scan(cache: &Arc<EdgeCache>, args: &[&[u8]], out: &mut Vec<u8>) {
    let Some(cursor) = utf8(args[0]).and_then(|c| c.parse::<u64>().ok()) else { return err(out, "invalid cursor") };
    let (mut pattern, mut count, mut strings) = (None, SCAN_COUNT, true);
    for option in args[1..].chunks(2) {
        let [name, value] = option else { return err(out, "syntax error") };
        match name.to_ascii_uppercase().as_slice() {
            b"MATCH" => pattern = Some(value.to_vec()),
            b"COUNT" => match utf8(value).and_then(|v| v.parse::<i64>().ok()) {
                Some(n) if n >= 1 => count = (n as usize).min(MAX_SCAN_COUNT),
                Some(_) => return err(out, "syntax error"),
                None => return err(out, "value is not an integer or out of range"),
            },
            b"TYPE" => strings = value.eq_ignore_ascii_case(b"string"),
            _ => return err(out, "syntax error"),
        }
    }
    let (next, mut keys) = cache.blocking(move |c| c.scan(cursor, count, pattern.as_deref(), now_ms())).await.unwrap_or_default();
    if !strings {
        // Every value is a string: another type matches nothing.
        keys.clear();
    }
    out.extend(b"*2\r\n");
    bulk(out, next.to_string().as_bytes());
    array(out, &keys);
}

/// A RESP array of bulk strings.
fn array(out: &mut Vec<u8>, items: &[String]) {
    out.extend(format!("*{}\r\n", items.len()).as_bytes());
    for item in items {
        bulk(out, item.as_bytes());
    }
}

/// `FLUSHDB`: drops every key on the node.
async fn flush(cache: &Arc<EdgeCache>, out: &mut Vec<u8>) {
    match cache.blocking(|c| c.clear()).await {
        Some(Ok(())) => out.extend(OK),
        Some(Err(e)) => err(out, &format!("flush failed: {e}")),
        None => err(out, "flush failed"),
    }
}

/// An entry from any tier or the origin; an origin failure is a miss here.
async fn lookup(cache: &Arc<EdgeCache>, key: &str) -> Option<Entry> {
    cache.lookup(key).await.unwrap_or_else(|e| {
        tracing::warn!(key, error = %e, "read-through failed");
        None
    })
}

/// One key's value as a bulk string, or nil; a client's read, so the
/// predictor and the hot-key counts see it.
async fn get(cache: &Arc<EdgeCache>, key: &[u8], out: &mut Vec<u8>) {
    let Some(key) = utf8(key) else { return out.extend(NIL) };
    cache.observe(key);
    match lookup(cache, key).await {
        Some(e) => bulk(out, &e.value),
        None => out.extend(NIL),
    }
}

/// `old` (absent: 0) plus `by`, as Redis's `INCRBY`: the value must be a
/// decimal 64-bit integer and the sum must not overflow.
fn add(old: Option<&Entry>, by: i64) -> Result<Vec<u8>, &'static str> {
    let n = match old {
        Some(e) => utf8(&e.value).and_then(|v| v.parse::<i64>().ok()).ok_or("value is not an integer or out of range")?,
        None => 0,
    };
    Ok(n.checked_add(by).ok_or("increment or decrement would overflow")?.to_string().into_bytes())
}

/// A read-modify-write of one key (`INCR`, `APPEND`), atomic against every
/// other write of it, keeping its time to live as Redis does; returns the
/// new value. `f` must be pure: it runs again on what the write replaced.
async fn update(
    cache: &Arc<EdgeCache>,
    key: &[u8],
    f: impl Fn(Option<&Entry>) -> Result<Vec<u8>, &'static str> + Clone + Send + 'static,
) -> Result<Vec<u8>, String> {
    let key = utf8(key).ok_or("keys must be UTF-8")?;
    let now = now_ms();
    let g = f.clone();
    let old = cache
        .put_with_async(key, move |old| Some((Bytes::from(g(old).ok()?), SetExpiry::Keep.ttl_ms(old, now))))
        .await
        .map_err(|e| e.to_string())?;
    let value = f(old.as_ref())?;
    write_origin(cache, key, Bytes::from(value.clone()));
    Ok(value)
}

/// With origin writes on, a write also goes to the origin, in the
/// background: the Redis protocol never waits for the origin.
fn write_origin(cache: &Arc<EdgeCache>, key: &str, value: Bytes) {
    if cache.origin().is_some_and(|w| w.writes != crate::origin::OriginWrites::None) {
        crate::origin::store_behind(cache.clone(), key.to_string(), value, "app_data".into());
    }
}

/// `EXPIRE key seconds [NX | XX | GT | LT]`, and `PEXPIRE` (`unit` 1), the
/// absolute `EXPIREAT` and `PEXPIREAT`: 1 if the key's expiry changed; a
/// time not in the future deletes the key, as in Redis 7. A key without an
/// expiry counts as expiring never: later than any time (`GT`, `LT`).
async fn expire(cache: &Arc<EdgeCache>, args: &[&[u8]], unit: u64, absolute: bool, out: &mut Vec<u8>) {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for flag in &args[3..] {
        match flag.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => return err(out, &format!("Unsupported option {}", String::from_utf8_lossy(flag))),
        }
    }
    if nx && (xx || gt || lt) {
        return err(out, "NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return err(out, "GT and LT options at the same time are not compatible");
    }
    let Some(t) = utf8(args[2]).and_then(|s| s.parse::<i64>().ok()) else {
        return err(out, "value is not an integer or out of range");
    };
    let base = if absolute { 0 } else { now_ms() as i64 };
    let Some(at) = t.checked_mul(unit as i64).and_then(|ms| ms.checked_add(base)) else {
        return err(out, &format!("invalid expire time in '{}' command", String::from_utf8_lossy(args[0]).to_lowercase()));
    };
    // Not in the future: 0, which deletes the key.
    let at = at.max(0) as u64;
    let Some(key) = utf8(args[1]).map(str::to_string) else { return int(out, 0) };
    let decide = move |before: Option<u64>| {
        let allowed = match before {
            None => !xx && !gt,
            Some(b) => !nx && (!gt || at > b) && (!lt || at < b),
        };
        allowed.then_some(Some(at))
    };
    let changed = cache.blocking(move |c| c.expire(&key, decide)).await.flatten();
    int(out, i64::from(changed == Some(true)));
}

/// `TTL` (`unit` 1000) and `PTTL` (1): the time left, rounded up; -1 for a
/// key that never expires, -2 for none.
async fn ttl(cache: &Arc<EdgeCache>, key: &[u8], unit: u64, out: &mut Vec<u8>) {
    let now = now_ms();
    let left = match utf8(key) {
        Some(key) => match lookup(cache, key).await {
            Some(e) => e.meta.expires_ms.map_or(-1, |t| t.saturating_sub(now).div_ceil(unit) as i64),
            None => -2,
        },
        None => -2,
    };
    int(out, left);
}

/// When a `SET` makes its key expire.
#[derive(Clone, Copy, PartialEq, Debug)]
enum SetExpiry {
    /// Never (`SET` clears an old time to live).
    Never,
    /// This many ms from now (`EX`, `PX`).
    In(u64),
    /// At this Unix time in ms (`EXAT`, `PXAT`).
    At(u64),
    /// When the old value would have (`KEEPTTL`).
    Keep,
}

impl SetExpiry {
    /// The time to live it gives a value replacing `old` at `now`; a time
    /// already past expires the value at once.
    fn ttl_ms(self, old: Option<&Entry>, now: u64) -> Option<u64> {
        match self {
            SetExpiry::Never => None,
            SetExpiry::In(ms) => Some(ms),
            SetExpiry::At(at) => Some(at.saturating_sub(now).max(1)),
            SetExpiry::Keep => old.and_then(|e| e.meta.expires_ms).map(|t| t.saturating_sub(now).max(1)),
        }
    }
}

/// `SET`'s options, as Redis 7 reads them.
#[derive(Clone, Copy, PartialEq, Debug)]
struct SetOptions {
    expiry: SetExpiry,
    /// `NX` (`Some(false)`: only if absent) or `XX` (`Some(true)`: only if present).
    only_if_present: Option<bool>,
    /// `GET`: answer with the old value.
    get: bool,
}

impl SetOptions {
    /// A plain `SET`.
    const PLAIN: SetOptions = SetOptions { expiry: SetExpiry::Never, only_if_present: None, get: false };
}

/// Parses `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms | KEEPTTL]`.
fn set_options(opts: &[&[u8]]) -> Result<SetOptions, &'static str> {
    let mut o = SetOptions::PLAIN;
    let mut words = opts.iter();
    while let Some(word) = words.next() {
        let word = word.to_ascii_uppercase();
        let condition = match word.as_slice() {
            b"NX" => Some(false),
            b"XX" => Some(true),
            _ => None,
        };
        if let Some(c) = condition {
            if o.only_if_present.is_some_and(|had| had != c) {
                return Err("syntax error");
            }
            o.only_if_present = Some(c);
            continue;
        }
        if word == b"GET" {
            o.get = true;
            continue;
        }
        if o.expiry != SetExpiry::Never {
            return Err("syntax error");
        }
        let (unit, absolute) = match word.as_slice() {
            b"KEEPTTL" => {
                o.expiry = SetExpiry::Keep;
                continue;
            }
            b"EX" => (1000, false),
            b"PX" => (1, false),
            b"EXAT" => (1000, true),
            b"PXAT" => (1, true),
            _ => return Err("syntax error"),
        };
        let t = words.next().ok_or("syntax error")?;
        let t = utf8(t).and_then(|v| v.parse::<i64>().ok()).filter(|v| *v > 0).ok_or("invalid expire time in 'set' command")?;
        let ms = (t as u64).saturating_mul(unit);
        o.expiry = if absolute { SetExpiry::At(ms) } else { SetExpiry::In(ms) };
    }
    Ok(o)
}

/// `SET key value` with options `o` (and `SETEX`, `PSETEX`, `GETSET`,
/// which are `SET` with fixed options): `OK`, or with `GET` the old value;
/// nil when a condition kept the key as it was.
async fn set(cache: &Arc<EdgeCache>, key: &[u8], value: &[u8], o: SetOptions, out: &mut Vec<u8>) {
    match write(cache, key, value, o).await {
        Ok((_, Some(old))) if o.get => bulk(out, &old.value),
        Ok((_, None)) if o.get => out.extend(NIL),
        Ok((true, _)) => out.extend(OK),
        Ok((false, _)) => out.extend(NIL),
        Err(e) => err(out, &e),
    }
}

/// Stores `value` under `key` as `SET` with options `o` does: write-behind;
/// the conditional forms are atomic against other writes of the key
/// ([`EdgeCache::put_with`]). Returns whether it stored, and the entry
/// held before (only looked up when `o` needs it).
async fn write(cache: &Arc<EdgeCache>, key: &[u8], value: &[u8], o: SetOptions) -> Result<(bool, Option<Entry>), String> {
    let key = utf8(key).ok_or("keys must be UTF-8")?;
    let value = Bytes::copy_from_slice(value);
    let now = now_ms();
    // Only the conditional forms, `GET` and `KEEPTTL` need the old value.
    let plain = o.only_if_present.is_none() && !o.get && o.expiry != SetExpiry::Keep;
    let (stored, old) = if plain {
        cache.put_behind(key, value.clone(), "app_data", o.expiry.ttl_ms(None, now)).await.map_err(|e| e.to_string())?;
        (true, None)
    } else {
        let stores = move |old: Option<&Entry>| o.only_if_present.is_none_or(|present| present == old.is_some());
        let v = value.clone();
        let old =
            cache.put_with_async(key, move |old| stores(old).then(|| (v, o.expiry.ttl_ms(old, now)))).await.map_err(|e| e.to_string())?;
        (stores(old.as_ref()), old)
    };
    if stored {
        write_origin(cache, key, value);
    }
    Ok((stored, old))
}

/// `INFO [section …]`: the server, stats and keyspace sections (all of
/// them by default, or with `all`, `default` or `everything`).
fn info(cache: &EdgeCache, asked: &[Vec<u8>]) -> String {
    let wants = |name: &str| {
        asked.is_empty()
            || asked.iter().any(|a| [name, "all", "default", "everything"].iter().any(|n| a.eq_ignore_ascii_case(n.as_bytes())))
    };
    let c = &cache.counters;
    let mut text = String::new();
    if wants("server") {
        text += &format!("# Server\r\nredis_version:7.0.0\r\nverge_version:{}\r\n", env!("CARGO_PKG_VERSION"));
    }
    if wants("stats") {
        let hits = c.hot_hits.load(Ordering::Relaxed) + c.warm_hits.load(Ordering::Relaxed) + c.cold_hits.load(Ordering::Relaxed);
        text += &format!("# Stats\r\nkeyspace_hits:{hits}\r\nkeyspace_misses:{}\r\n", c.misses.load(Ordering::Relaxed));
    }
    if wants("keyspace") {
        // Keys as DBSIZE counts them; expiring ones as memory knows them.
        text += &format!("# Keyspace\r\ndb0:keys={},expires={}\r\n", cache.key_count(), cache.hot_expiring());
    }
    text
}

/// Listens on `addr` and serves every connection until shutdown; with
/// `tls`, connections must complete mutual TLS first (required for any
/// address but loopback). Returns the bound address.
pub async fn listen(
    addr: std::net::SocketAddr,
    cache: Arc<EdgeCache>,
    tls: Option<verge_client::serve::TlsSource>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let tls = tls.filter(|_| !bound.ip().is_loopback());
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::warn!(error = %e, "RESP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            };
            let _ = tcp.set_nodelay(true);
            let cache = cache.clone();
            let acceptor = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.read().unwrap_or_else(|p| p.into_inner()).clone()));
            tokio::spawn(async move {
                match acceptor {
                    None => serve(cache, tcp).await,
                    Some(a) => match a.accept(tcp).await {
                        Ok(stream) => serve(cache, stream).await,
                        Err(e) => tracing::info!(error = %e, "RESP TLS handshake refused"),
                    },
                }
            });
        }
    });
    Ok(bound)
}

/// Serves one client connection until it closes or breaks the protocol.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(cache: Arc<EdgeCache>, mut stream: S) {
    // Values a little over the limit are read and refused with a clear
    // error; far over it is a protocol error (nothing is buffered for it).
    let max_bulk = usize::try_from(cache.sizes().max_value).unwrap_or(usize::MAX).saturating_add(1 << 20);
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        let mut close = false;
        loop {
            match parse(&buf[used..], max_bulk) {
                Parsed::Incomplete => break,
                Parsed::Invalid(why) => {
                    err(&mut out, &format!("Protocol error: {why}"));
                    close = true;
                    break;
                }
                Parsed::Command(args, len) => {
                    let next = execute(&cache, &args, &mut out).await;
                    used += len;
                    if let Next::Close = next {
                        close = true;
                        break;
                    }
                }
            }
        }
        buf.drain(..used);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn arrays_inline_and_partial_input() {
        let full = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        let Parsed::Command(args, n) = parse(full, 100) else { panic!() };
        assert_eq!(args, vec![&b"SET"[..], b"k", b"hello"]);
        assert_eq!(parse(&full[n..], 100), Parsed::Command(vec![&b"PING"[..]], 14));
        for cut in 1..n {
            assert_eq!(parse(&full[..cut], 100), Parsed::Incomplete, "cut at {cut}");
        }
        assert_eq!(parse(b"PING  x\r\n", 100), Parsed::Command(vec![&b"PING"[..], b"x"], 9));
        assert!(matches!(parse(b"*1\r\n$999\r\n", 100), Parsed::Invalid(_)));
        assert!(matches!(parse(b"*-5\r\n", 100), Parsed::Invalid(_)));
        assert!(matches!(parse(b"*1\r\n:5\r\n", 100), Parsed::Invalid(_)));
        assert!(matches!(parse(b"*1\r\n$1\r\nabc\r\n", 100), Parsed::Invalid(_)));
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_never_overreads(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Parsed::Command(_, n) = parse(&bytes, 64) {
                prop_assert!(n <= bytes.len());
            }
        }
    }
}
