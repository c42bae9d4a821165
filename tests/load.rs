//! Load against the built binary: many clients at once, many requests,
//! many sessions with output. Every reply and every byte must arrive and
//! the helper's memory must stay bounded; the figures are printed (run
//! with `--nocapture`), never asserted as times.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use common::*;
use serde_json::{json, Value};

#[test]
fn two_hundred_clients_at_once_all_get_their_replies() {
    let h = Arc::new(Helper::start());
    let _p = h.started();
    const CLIENTS: usize = 200;
    const EACH: u64 = 5;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let h = h.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = h.conn();
                // Every client is connected before any sends.
                barrier.wait();
                for n in 0..EACH {
                    let id = (i as u64) * 100 + n;
                    let method = if n % 2 == 0 {
                        "isRunning"
                    } else {
                        "isGuestConnected"
                    };
                    c.send(&json!({"method": method, "id": id, "params": {}}));
                }
                let mut seen = Vec::new();
                for _ in 0..EACH {
                    let r = c.recv().expect("a reply for every request");
                    assert_eq!(r["success"], true, "{r}");
                    seen.push(r["id"].as_u64().unwrap());
                }
                seen.sort();
                let want: Vec<u64> = (0..EACH).map(|n| i as u64 * 100 + n).collect();
                assert_eq!(seen, want, "client {i}: every reply, each once");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    eprintln!(
        "{CLIENTS} concurrent clients x {EACH} requests: {:.2} s, helper RSS {} KiB",
        t0.elapsed().as_secs_f64(),
        rss_kib(h.child.id())
    );
    h.assert_alive();
}

#[test]
fn ten_thousand_mixed_requests_lose_no_reply() {
    let h = Arc::new(Helper::start());
    let file = h.home.join("note.txt");
    std::fs::write(&file, "readable").unwrap();
    let _p = h.started();
    const PIPES: usize = 20;
    const EACH: usize = 500;
    let rss_before = rss_kib(h.child.id());
    let t0 = Instant::now();
    let threads: Vec<_> = (0..PIPES)
        .map(|i| {
            let h = h.clone();
            let file = file.to_string_lossy().into_owned();
            std::thread::spawn(move || {
                let mut c = h.conn();
                let mut expect: HashMap<u64, &'static str> = HashMap::new();
                for n in 0..EACH {
                    let id = (i * EACH + n) as u64;
                    let (method, params, want): (&str, Value, &'static str) = match n % 5 {
                        0 => ("isRunning", json!({}), "ok"),
                        1 => ("isProcessRunning", json!({"id": format!("none{n}")}), "ok"),
                        2 => ("readFile", json!({"processName": "reader", "filePath": file}), "ok"),
                        3 => ("noSuchMethod", json!({}), "error"),
                        _ => (
                            "spawn",
                            json!({"id": format!("t{id}"), "name": format!("l{i}"), "command": "/bin/true"}),
                            "ok",
                        ),
                    };
                    expect.insert(id, want);
                    c.send(&json!({"method": method, "id": id, "params": params}));
                }
                for _ in 0..EACH {
                    let r = c.recv().expect("a reply for every request");
                    let id = r["id"].as_u64().expect("replies carry their id");
                    let want = expect.remove(&id).expect("one reply per id");
                    let ok = r["success"] == true;
                    assert_eq!(ok, want == "ok", "request {id}: {r}");
                }
                assert!(expect.is_empty());
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let secs = t0.elapsed().as_secs_f64();
    let rss_after = rss_kib(h.child.id());
    eprintln!(
        "{} mixed requests ({} spawns) over {PIPES} pipes: {secs:.2} s ({:.0}/s); helper RSS {rss_before} -> {rss_after} KiB",
        PIPES * EACH,
        PIPES * EACH / 5,
        (PIPES * EACH) as f64 / secs
    );
    assert!(
        rss_after < 256 * 1024,
        "helper memory after 10,000 requests: {rss_after} KiB"
    );
    h.assert_alive();
}

#[test]
fn fifty_sessions_with_output_lose_no_byte() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    const N: usize = 50;
    const KIB: usize = 256;
    let t0 = Instant::now();
    for i in 0..N {
        // Each line names its session and position: a lost, duplicated or
        // misrouted chunk shows.
        let script = format!(
            "i=0; while [ $i -lt {} ]; do printf 's{i:02} %07d ................................................\\n' $i; i=$((i+1)); done",
            KIB * 1024 / 64
        );
        p.ok(
            "spawn",
            spawn_params(
                &format!("s{i}"),
                &format!("sess{i}"),
                "/bin/sh",
                &["-c", &script],
            ),
        );
    }
    let mut out: Vec<String> = vec![String::new(); N];
    let mut left = N;
    let mut peak = 0;
    while left > 0 {
        let e = ev.next();
        let Some(i) = e["id"]
            .as_str()
            .and_then(|s| s.strip_prefix('s'))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        match e["type"].as_str().unwrap_or("") {
            "stdout" => out[i] += e["data"].as_str().unwrap_or(""),
            "exit" => {
                assert_eq!(e["exitCode"], 0, "{e}");
                left -= 1;
            }
            _ => {}
        }
        peak = peak.max(rss_kib(h.child.id()));
    }
    let secs = t0.elapsed().as_secs_f64();
    for (i, o) in out.iter().enumerate() {
        let want: String = (0..KIB * 1024 / 64)
            .map(|n| format!("s{i:02} {n:07} ................................................\n"))
            .collect();
        assert!(
            o == &want,
            "session {i}: {} bytes, {} expected",
            o.len(),
            want.len()
        );
    }
    eprintln!(
        "{N} sessions x {KIB} KiB: {secs:.2} s ({:.1} MiB/s); helper peak RSS {peak} KiB",
        (N * KIB) as f64 / 1024.0 / secs
    );
    assert!(peak < 256 * 1024, "helper memory: {peak} KiB");
}
