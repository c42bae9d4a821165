//! Faults the helper must survive, each against the built binary: being
//! SIGKILLed mid-session and restarted the way the app restarts it, a full
//! disk under a session, a subscriber that never reads, clients that leave
//! mid-request, descriptors it inherits. (Guest panics and agent crashes
//! are the kvm backend's, in the nested harness: tests/nested.rs.)
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The desktop app's reconnect loop: connect and ask `isRunning` every
/// 200 ms until a helper answers. Returns how many attempts it took.
fn app_retry_loop(socket: &std::path::Path) -> usize {
    for attempt in 1..=150 {
        if let Ok(s) = UnixStream::connect(socket) {
            let mut c = Conn::new(s);
            c.send(&json!({"method": "isRunning", "params": {}}));
            if c.recv().is_some_and(|r| r["success"] == true) {
                return attempt;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no helper answered on {} within 30 s", socket.display());
}

/// Runs `script` in session s1 with the home folder `mount` as its rw
/// working folder.
fn spawn_in_mount(h: &Helper, id: &str, mount: &str, script: &str) {
    let params = json!({"id": id, "name": "s1", "command": "/bin/sh", "args": ["-c", script],
        "cwd": "/sessions/s1", "additionalMounts": {mount: {"path": mount, "mode": "rw"}}});
    let mut c = h.conn();
    c.send(&json!({"method": "spawn", "id": 1, "params": params}));
    assert_eq!(c.recv().unwrap()["success"], true);
}

#[test]
fn helper_killed_mid_session_is_restarted_in_place_with_the_work_intact() {
    let mut h = Helper::start();
    let proj = h.mkdir("proj");
    let mut ev = h.subscribe();
    let p = h.started();
    spawn_in_mount(
        &h,
        "w",
        "proj",
        "echo kept > out.txt && echo written && exec sleep 601",
    );
    loop {
        let e = ev.next();
        if e["id"] == "w" && e["type"] == "stdout" {
            break;
        }
    }
    drop(p);

    // SIGKILL: no cleanup at all, the socket file stays behind.
    h.child.kill().unwrap();
    h.child.wait().unwrap();
    assert!(h.socket.exists(), "a killed helper leaves its socket file");
    assert!(
        UnixStream::connect(&h.socket).is_err(),
        "nothing listens on it"
    );

    let mut again = command(h.tmp.path())
        .arg("-socket")
        .arg(&h.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let attempts = app_retry_loop(&h.socket);
    eprintln!("restarted helper answered after {attempts} attempt(s) of the app's loop");
    assert_eq!(
        std::fs::read_to_string(proj.join("out.txt")).unwrap(),
        "kept\n",
        "what the session wrote survives the helper"
    );
    // The new helper serves sessions as if nothing happened (on the same
    // socket path, so the fixture's own connections reach it).
    let mut ev = h.subscribe();
    let p = Pipe::new(h.conn());
    p.ok("startVM", json!({}));
    p.ok("spawn", sh("after", "echo back"));
    assert_eq!(ev.until_exit("after").stdout, "back\n");
    // The old session's process is not the new helper's.
    assert_eq!(
        p.call("isProcessRunning", json!({"id": "w"}))["result"]["running"],
        json!(false)
    );
    // On the host backend it outlived the helper (bwrap's --die-with-parent
    // and the VM end theirs): end it here.
    let _ = std::process::Command::new("pkill")
        .args(["-f", "^sleep 601$"])
        .status();
    let _ = again.kill();
    let _ = again.wait();
}

#[test]
#[cfg_attr(not(has_root), ignore = "mounting a small tmpfs needs root")]
fn a_full_disk_fails_the_write_not_the_helper() {
    let test = "a_full_disk_fails_the_write_not_the_helper";
    if !require(is_root(), test, "mounting a small tmpfs needs root") {
        return;
    }
    let h = Helper::start();
    let small = h.mkdir("small");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "cowork-full"])
        .arg(&small)
        .status();
    if !require(
        mounted.is_ok_and(|s| s.success()),
        test,
        "cannot mount a tmpfs here",
    ) {
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let mut ev = h.subscribe();
    let _p = h.started();
    spawn_in_mount(
        &h,
        "fill",
        "small",
        "dd if=/dev/zero of=big bs=64k count=64 2>/dev/null; echo rc=$?",
    );
    let out = ev.until_exit("fill");
    assert_eq!(out.stdout, "rc=1\n", "the session sees the disk full");
    // Everything else goes on: new sessions, reads of what was written.
    h.assert_alive();
    let p = h.started();
    p.ok("spawn", sh("next", "echo fine"));
    assert_eq!(ev.until_exit("next").stdout, "fine\n");
}

/// Policy (backend/src/bus.rs, docs/protocol.md): a subscriber's queue
/// holds 64 frames; publishing waits for room, and a subscriber that stays
/// full for 10 s is disconnected. Output is never dropped for the others.
#[test]
fn a_subscriber_that_never_reads_is_dropped_and_the_others_get_everything() {
    let h = Helper::start();
    let mut stuck = h.conn();
    stuck.send(&json!({"method": "subscribeEvents", "params": {}}));
    assert_eq!(stuck.recv().unwrap(), json!({"success": true}));
    // Its socket buffer fills and then its queue: it never reads again.
    let mut reader = h.subscribe();
    let p = h.started();
    const MIB: usize = 48;
    p.ok(
        "spawn",
        sh("flood", &format!("head -c {}M /dev/zero | tr '\\0' x", MIB)),
    );
    let t0 = Instant::now();
    let mut peak_rss = 0;
    let mut got = 0usize;
    loop {
        let e = reader.next();
        if e["id"] != "flood" {
            continue;
        }
        match e["type"].as_str().unwrap_or("") {
            "stdout" => got += e["data"].as_str().unwrap_or("").len(),
            "exit" => break,
            _ => {}
        }
        peak_rss = peak_rss.max(rss_kib(h.child.id()));
    }
    eprintln!(
        "{got} bytes to the reading subscriber in {:.1} s; helper peak RSS {} MiB with a stuck subscriber",
        t0.elapsed().as_secs_f64(),
        peak_rss / 1024
    );
    assert_eq!(got, MIB << 20, "the reading subscriber got every byte");
    assert!(
        peak_rss < 128 * 1024,
        "helper memory stays bounded with a stuck subscriber: {peak_rss} KiB"
    );
    assert!(
        h.log_text().contains("did not read"),
        "the stuck subscriber was disconnected"
    );
    // The stuck one is closed once its backlog drains.
    stuck
        .s
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = stuck.s.read_to_end(&mut sink);
    assert!(!sink.is_empty());
}

#[test]
fn clients_leaving_mid_request_cost_nothing() {
    let h = Helper::start();
    let _p = h.started();
    for _ in 0..50 {
        // Half a frame, then gone.
        let mut s = UnixStream::connect(&h.socket).unwrap();
        s.write_all(&[0, 0, 1, 0, b'{']).unwrap();
        drop(s);
        // A whole request whose reply nobody waits for.
        let mut s = UnixStream::connect(&h.socket).unwrap();
        let body = br#"{"method":"spawn","id":1,"params":{"id":"gone","name":"s1","command":"/bin/true"}}"#;
        s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        s.write_all(body).unwrap();
        drop(s);
    }
    h.assert_alive();
    let mut ev = h.subscribe();
    let p = h.started();
    p.ok("spawn", sh("still", "echo serving"));
    assert_eq!(ev.until_exit("still").stdout, "serving\n");
    assert!(h.child_alive());
}

#[test]
fn inherited_descriptors_do_not_reach_sessions() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (keep, _other) = UnixStream::pair().unwrap();
    let raw = keep.as_raw_fd();
    // SAFETY: dup2 in the child before exec, to a fixed number and without
    // close-on-exec, as a careless launcher would leave it.
    let h = Helper::start_with(|c| unsafe {
        c.pre_exec(move || {
            if libc::dup2(raw, 42) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    });
    let mut ev = h.subscribe();
    let p = h.started();
    p.ok("spawn", sh("fds", "ls /proc/self/fd"));
    let fds = ev.until_exit("fds").stdout;
    assert!(
        !fds.lines().any(|l| l == "42"),
        "an inherited descriptor reached the session: {fds}"
    );
    let helper_fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", h.child.id()))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !helper_fds.contains(&"42".to_string()),
        "the helper closed it"
    );
}
