//! The agent as an ordinary process serving a host over a Unix socket:
//! everything but the VM-only parts (mounts, cgroups), end to end.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::time::Duration;

use common::Agent;
use cowork_guest::wire::{self, GuestMsg, HostMsg};

#[test]
fn spawn_output_exit_and_stdin() {
    let mut a = Agent::start();
    a.spawn("p", "/bin/sh", &["-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(a.recv().0, GuestMsg::Spawned { id: "p".into() });
    assert_eq!(
        a.collect("p"),
        (b"out\n".to_vec(), b"err\n".to_vec(), Some(7), None)
    );

    a.spawn("c", "/bin/cat", &[]);
    a.send(&HostMsg::Stdin { id: "c".into() }, b"binary \x00\xff ok");
    a.send(&HostMsg::CloseStdin { id: "c".into() }, &[]);
    let (out, _, code, _) = a.collect("c");
    assert_eq!(
        (out.as_slice(), code),
        (&b"binary \x00\xff ok"[..], Some(0))
    );

    a.spawn("s", "/bin/sleep", &["30"]);
    a.send(
        &HostMsg::Kill {
            id: "s".into(),
            signal: 15,
        },
        &[],
    );
    assert_eq!(a.collect("s").3, Some(15));

    a.spawn("x", "/no/such/binary", &[]);
    assert!(matches!(a.recv().0, GuestMsg::SpawnFailed { .. }));
    a.send(&HostMsg::Ping { req: 9 }, &[]);
    assert_eq!(a.recv().0, GuestMsg::Pong { req: 9 });
}

#[test]
fn output_order_and_sixty_four_mib() {
    let mut a = Agent::start();
    a.spawn(
        "o",
        "/bin/sh",
        &[
            "-c",
            "i=0; while [ $i -lt 3000 ]; do echo o$i; echo e$i >&2; i=$((i+1)); done",
        ],
    );
    let (out, err, code, _) = a.collect("o");
    let want = |p: &str| {
        (0..3000)
            .map(|i| format!("{p}{i}\n"))
            .collect::<String>()
            .into_bytes()
    };
    assert!(out == want("o") && err == want("e") && code == Some(0));

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big");
    let content: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&file, &content).unwrap();
    a.spawn("big", "/bin/cat", &[file.to_str().unwrap()]);
    let (out, _, code, _) = a.collect("big");
    assert_eq!(out.len(), content.len());
    assert!(out == content, "bytes differ");
    assert_eq!(code, Some(0));
}

#[test]
fn twenty_concurrent_processes() {
    let mut a = Agent::start();
    for i in 0..20 {
        a.spawn(
            &format!("p{i}"),
            "/bin/sh",
            &[
                "-c",
                &format!("i=0; while [ $i -lt 500 ]; do echo {i}-$i; i=$((i+1)); done"),
            ],
        );
    }
    let mut outs = vec![Vec::new(); 20];
    let mut exited = 0;
    while exited < 20 {
        match a.recv() {
            (GuestMsg::Stdout { id }, p) => outs[id[1..].parse::<usize>().unwrap()].extend(p),
            (GuestMsg::Exit { code, .. }, _) => {
                assert_eq!(code, Some(0));
                exited += 1;
            }
            _ => {}
        }
    }
    for (i, o) in outs.iter().enumerate() {
        let want: String = (0..500).map(|n| format!("{i}-{n}\n")).collect();
        assert!(o == want.as_bytes(), "process {i}");
    }
}

#[test]
fn read_file_is_limited() {
    let mut a = Agent::start();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("small"), "hello").unwrap();
    std::fs::write(tmp.path().join("big"), vec![0u8; 5000]).unwrap();
    nix::unistd::mkfifo(
        &tmp.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let read = |a: &mut Agent, name: &str, limit: u64| {
        a.send(
            &HostMsg::ReadFile {
                req: 1,
                path: tmp.path().join(name).to_string_lossy().into(),
                limit,
                session: None,
            },
            &[],
        );
        a.recv()
    };
    assert_eq!(
        read(&mut a, "small", 100),
        (GuestMsg::File { req: 1 }, b"hello".to_vec())
    );
    for (name, limit, needle) in [
        ("big", 4096, "limit"),
        ("fifo", 100, "not a regular file"),
        ("missing", 100, "cannot open"),
    ] {
        match read(&mut a, name, limit).0 {
            GuestMsg::Failed { error, .. } => assert!(error.contains(needle), "{name}: {error}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn malformed_frames_get_errors_and_no_panic() {
    let mut a = Agent::start();
    let bad_bodies: Vec<Vec<u8>> = vec![
        vec![0, 0, 0, 2, b'{', b'}'],                   // no type
        vec![0, 0, 0, 5, b'n', b'o', b'p', b'e', b'!'], // not JSON
        vec![0, 0, 0, 99, b'{'],                        // header longer than the frame
        br#"{"type":"spawn"}"#.to_vec(),                // header length missing (reads as huge)
        [
            &[0u8, 0, 0, 30][..],
            br#"{"type":"kill","id":"x","signal":"TERM"}"#,
        ]
        .concat(),
        [&[0u8, 0, 0, 16][..], br#"{"type":"reboot"}"#].concat(),
    ];
    for body in bad_bodies {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend(body);
        a.s.write_all(&f).unwrap();
        assert!(matches!(a.recv().0, GuestMsg::Error { .. }));
    }
    a.send(
        &HostMsg::Kill {
            id: "ghost".into(),
            signal: 9,
        },
        &[],
    );
    assert!(matches!(a.recv().0, GuestMsg::Error { .. }));
    a.send(
        &HostMsg::Kill {
            id: "ghost".into(),
            signal: 9999,
        },
        &[],
    );
    assert!(matches!(a.recv().0, GuestMsg::Error { .. }));
    a.send(
        &HostMsg::Mount {
            req: 3,
            tag: "t".into(),
            subdir: None,
            path: "/tmp/x".into(),
            read_only: true,
        },
        &[],
    );
    assert!(matches!(a.recv().0, GuestMsg::Failed { req: 3, .. }));
    a.spawn("d", "/bin/sleep", &["5"]);
    a.recv();
    a.spawn("d", "/bin/sleep", &["5"]);
    assert!(
        matches!(a.recv().0, GuestMsg::SpawnFailed { .. }),
        "duplicate id"
    );
    a.send(&HostMsg::Ping { req: 1 }, &[]);
    assert_eq!(a.recv().0, GuestMsg::Pong { req: 1 }, "still serving");
    // An oversized length breaks the framing: an error, then the end.
    a.s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(matches!(a.recv().0, GuestMsg::Error { .. }));
    let status = a.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the agent ended cleanly, no panic");
    // What is left: the exits of the processes that were ended, then EOF.
    while let Some((m, _)) = a.try_recv() {
        assert!(
            matches!(m, GuestMsg::Exit { ref id, signal: Some(9), .. } if id == "d"),
            "{m:?}"
        );
    }
}

#[test]
fn shutdown_ends_processes_and_the_agent() {
    let mut a = Agent::start();
    a.spawn("long", "/bin/sleep", &["100"]);
    a.recv();
    a.send(&HostMsg::Shutdown, &[]);
    assert_eq!(a.child.wait().unwrap().code(), Some(0));
}

/// The session disk's bookkeeping runs in the guest: sizes, deleting idle
/// sessions (never active ones), pruning caches; bad requests fail alone.
#[test]
fn session_disk_operations() {
    let mut a = Agent::start();
    let root = a._tmp.path().join("sessions");
    for name in ["idle", "busy"] {
        std::fs::create_dir_all(root.join(name).join(".cache")).unwrap();
        std::fs::write(root.join(name).join(".cache/blob"), vec![1u8; 8192]).unwrap();
        std::fs::write(root.join(name).join("work.txt"), b"work").unwrap();
    }
    let mut ask = |req: u64, op: &str, args: serde_json::Value| {
        a.send(
            &HostMsg::Sessions {
                req,
                op: op.into(),
                args,
            },
            &[],
        );
        match a.recv() {
            (GuestMsg::Json { req: r }, p) if r == req => {
                Ok(serde_json::from_slice::<serde_json::Value>(&p).unwrap())
            }
            (GuestMsg::Failed { req: r, error }, _) if r == req => Err(error),
            other => panic!("unexpected {other:?}"),
        }
    };
    let info = ask(
        1,
        "diskInfo",
        serde_json::json!({"lowWater": 0, "active": ["busy"]}),
    )
    .unwrap();
    let sessions = info["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{info}");
    assert!(info["totalBytes"].as_u64().unwrap() > 0);
    let pruned = ask(
        2,
        "prune",
        serde_json::json!({"request": {}, "active": ["busy"]}),
    )
    .unwrap();
    assert_eq!(
        pruned["prunedSessions"],
        serde_json::json!(["idle"]),
        "{pruned}"
    );
    assert!(!root.join("idle/.cache/blob").exists());
    assert!(
        root.join("busy/.cache/blob").exists(),
        "an active session is left alone"
    );
    let deleted = ask(
        3,
        "delete",
        serde_json::json!({"names": ["idle", "busy"], "active": ["busy"]}),
    )
    .unwrap();
    assert_eq!(deleted["deleted"], serde_json::json!(["idle"]), "{deleted}");
    assert!(root.join("busy").exists());
    assert!(ask(4, "delete", serde_json::json!({"names": "x"})).is_err());
    assert!(ask(5, "format", serde_json::json!({})).is_err());
    assert!(ask(
        6,
        "delete",
        serde_json::json!({"names": ["../escape"], "active": []})
    )
    .unwrap()["errors"]
        .as_object()
        .is_some());
}

/// A process that never reads its stdin stalls only itself: 20 MiB sent to
/// `sleep` (over the 16 MiB bound: the excess is refused with errors naming
/// it) do not hold back another process's spawn and output.
#[test]
fn a_process_not_reading_stdin_stalls_only_itself() {
    let mut a = Agent::start();
    a.spawn("deaf", "/bin/sleep", &["30"]);
    assert_eq!(a.recv().0, GuestMsg::Spawned { id: "deaf".into() });
    // The writes run on their own thread: a stalled agent must fail this
    // test by its deadline, not hang it.
    let mut w = a.s.try_clone().unwrap();
    let started = std::time::Instant::now();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..320 {
            let f = wire::encode(&HostMsg::Stdin { id: "deaf".into() }, &chunk).unwrap();
            w.write_all(&f).unwrap();
        }
        let spawn = HostMsg::Spawn {
            id: "next".into(),
            command: "/bin/echo".into(),
            args: vec!["still here".into()],
            env: vec![],
            cwd: None,
            session: None,
        };
        w.write_all(&wire::encode(&spawn, &[]).unwrap()).unwrap();
    });
    a.s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut refusals = 0;
    let out = loop {
        match a
            .try_recv()
            .expect("the agent stalled: no output of the second process")
        {
            (GuestMsg::Error { message }, _) => {
                assert!(message.contains("\"deaf\""), "{message}");
                refusals += 1;
            }
            (GuestMsg::Stdout { id }, p) if id == "next" => break p,
            _ => {}
        }
    };
    assert_eq!(out, b"still here\n");
    assert!(refusals > 0, "the bytes over the bound were refused");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    writer.join().unwrap();
}

/// Run by hand nothing is confined: a session's user is the agent's own.
#[test]
fn session_user_out_of_the_vm_is_the_agents() {
    let mut a = Agent::start();
    a.send(
        &HostMsg::SessionUser {
            req: 4,
            session: "any".into(),
        },
        &[],
    );
    match a.recv() {
        (GuestMsg::Json { req: 4 }, p) => {
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            let want = serde_json::json!({
                "uid": nix::unistd::getuid().as_raw(),
                "gid": nix::unistd::getgid().as_raw(),
            });
            assert_eq!(v, want);
        }
        other => panic!("{other:?}"),
    }
}

/// Out of the VM, `endSession` ends the processes the agent started for
/// that session (their groups) and no other.
#[test]
fn end_session_out_of_the_vm_ends_its_processes() {
    let mut a = Agent::start();
    let spawn = |a: &mut Agent, id: &str, session: &str| {
        a.send(
            &HostMsg::Spawn {
                id: id.into(),
                command: "/bin/sh".into(),
                args: vec!["-c".into(), "echo up; sleep 300".into()],
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                cwd: None,
                session: Some(session.into()),
            },
            &[],
        )
    };
    spawn(&mut a, "mine", "s1");
    spawn(&mut a, "theirs", "s2");
    a.send(
        &HostMsg::EndSession {
            req: 5,
            session: "s1".into(),
        },
        &[],
    );
    let (mut done, mut exited) = (false, false);
    while !(done && exited) {
        match a.recv() {
            (GuestMsg::Done { req: 5 }, _) => done = true,
            (GuestMsg::Failed { req: 5, error }, _) => panic!("{error}"),
            (GuestMsg::Exit { id, signal, .. }, _) => {
                assert_eq!(id, "mine", "only s1's process ends");
                assert_eq!(signal, Some(9));
                exited = true;
            }
            _ => {}
        }
    }
    // s2's process is still there to be killed.
    a.send(
        &HostMsg::Kill {
            id: "theirs".into(),
            signal: 9,
        },
        &[],
    );
    let (_, _, _, signal) = a.collect("theirs");
    assert_eq!(signal, Some(9));
}
