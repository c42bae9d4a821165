//! A mock of the Anthropic Messages API for one agent turn, on a loopback
//! address. `POST /v1/messages` with the Bash tool in `tools` and no
//! tool result yet gets a streamed `tool_use` of Bash running
//! [`TOOL_COMMAND`]; once the conversation carries a `tool_result`, a text
//! answer ending the turn. Any other `/v1/messages` call (the CLI's side
//! requests: titles, quota checks) gets a short text answer; any other path
//! `404`. Every request is logged ([`MockApi::requests`]).
//!
//! Requests are read with bounds (head and body sizes) and parsed leniently:
//! whatever the CLI sends, the mock answers or closes the connection, and
//! never panics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// What the agent's Bash tool call runs in the session's working folder.
pub const TOOL_COMMAND: &str = "echo agent-was-here > proof.txt && uname -a";
/// The final answer's text.
pub const FINAL_TEXT: &str = "Done: proof.txt is written.";

/// The largest request head and body accepted (a 1 MiB prompt plus the
/// CLI's system prompt and tool schemas fit well under this).
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 32 * 1024 * 1024;
/// How long an idle keep-alive connection is kept.
const IDLE: Duration = Duration::from_secs(30);

/// One request the mock saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body_len: usize,
    /// For `/v1/messages`: what the mock answered (`tool_use`, `final`,
    /// `side`), else empty.
    pub answered: &'static str,
    /// For `/v1/messages`: the text blocks of the first (user) message:
    /// the user's prompt and what the CLI adds to it.
    pub first_texts: Vec<String>,
    /// For `/v1/messages`: the Bash tool's input schema, when advertised.
    pub bash_schema: Option<Value>,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
}

/// The running mock; it stops accepting when dropped.
pub struct MockApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl MockApi {
    /// Listens on `ip` (a loopback address) on a free port.
    pub fn start(ip: Ipv4Addr) -> std::io::Result<MockApi> {
        if !ip.is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the mock listens on loopback only",
            ));
        }
        let listener = TcpListener::bind((ip, 0))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        Ok(MockApi { addr, state, stop })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state
            .lock()
            .map(|s| s.seen.clone())
            .unwrap_or_default()
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    /// The client sent `Connection: close` (the egress proxy does).
    close: bool,
}

/// Reads one request; None when the connection ended or sent garbage.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take((MAX_HEAD - head.len()) as u64 + 1)
            .read_until(b'\n', &mut line)
            .ok()?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.lines();
    let mut start = lines.next()?.split_whitespace();
    let method = start.next()?.to_string();
    let path = start.next()?.to_string();
    let mut length = 0usize;
    let mut chunked = false;
    let mut close = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = v.parse().ok()?;
        } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k == "connection" && v.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let body = if chunked {
        read_chunked(r)?
    } else {
        if length > MAX_BODY {
            return None;
        }
        let mut b = vec![0u8; length];
        r.read_exact(&mut b).ok()?;
        b
    };
    Some(Request {
        method,
        path,
        body,
        close,
    })
}

fn read_chunked(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.by_ref().take(1024).read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
        if body.len() + size > MAX_BODY {
            return None;
        }
        let at = body.len();
        body.resize(at + size, 0);
        r.read_exact(&mut body[at..]).ok()?;
        let mut crlf = String::new();
        r.by_ref().take(1024).read_line(&mut crlf).ok()?;
        if size == 0 {
            return Some(body);
        }
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let _ = conn.set_read_timeout(Some(IDLE));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r) {
        let (status, ctype, body, seen) = answer(&req);
        if let Ok(mut s) = state.lock() {
            s.seen.push(seen);
        }
        let connection = if req.close { "close" } else { "keep-alive" };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: {connection}\r\nrequest-id: req_mock\r\n\r\n",
            body.len()
        );
        if out.write_all(head.as_bytes()).is_err()
            || out.write_all(body.as_bytes()).is_err()
            || req.close
        {
            return;
        }
    }
}

fn answer(req: &Request) -> (&'static str, &'static str, String, Seen) {
    let mut seen = Seen {
        method: req.method.clone(),
        path: req.path.clone(),
        body_len: req.body.len(),
        answered: "",
        first_texts: Vec::new(),
        bash_schema: None,
    };
    // Servers must accept the absolute form too (RFC 9112, 3.2.2).
    let origin_form = match req.path.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => req.path.as_str(),
    };
    let path = origin_form.split('?').next().unwrap_or("");
    if req.method != "POST" || path != "/v1/messages" {
        let body =
            json!({"type": "error", "error": {"type": "not_found_error", "message": "not mocked"}});
        return ("404 Not Found", "application/json", body.to_string(), seen);
    }
    let Ok(v) = serde_json::from_slice::<Value>(&req.body) else {
        let body = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "body is not JSON"}});
        return (
            "400 Bad Request",
            "application/json",
            body.to_string(),
            seen,
        );
    };
    let messages = v["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    seen.first_texts = messages
        .first()
        .map(|m| texts(&m["content"]))
        .unwrap_or_default();
    seen.bash_schema = v["tools"].as_array().and_then(|tools| {
        tools
            .iter()
            .find(|t| t["name"] == "Bash")
            .map(|t| t["input_schema"].clone())
    });
    let has_result = messages.iter().any(|m| {
        m["content"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
    });
    let model = v["model"].as_str().unwrap_or("claude-mock").to_string();
    let blocks = match (&seen.bash_schema, has_result) {
        (Some(_), false) => {
            seen.answered = "tool_use";
            vec![
                json!({"type": "tool_use", "id": "toolu_mock_1", "name": "Bash",
                "input": {"command": TOOL_COMMAND, "description": "Write proof.txt"}}),
            ]
        }
        (Some(_), true) => {
            seen.answered = "final";
            vec![json!({"type": "text", "text": FINAL_TEXT})]
        }
        (None, _) => {
            seen.answered = "side";
            vec![json!({"type": "text", "text": "Mock"})]
        }
    };
    let stop = if seen.answered == "tool_use" {
        "tool_use"
    } else {
        "end_turn"
    };
    if v["stream"] == true {
        let body = sse(&model, &blocks, stop);
        ("200 OK", "text/event-stream", body, seen)
    } else {
        let body = json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 10}});
        ("200 OK", "application/json", body.to_string(), seen)
    }
}

/// The texts of a message's content (a string or blocks).
fn texts(content: &Value) -> Vec<String> {
    match content {
        Value::String(s) => vec![s.clone()],
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The Messages streaming format: message_start, per block
/// content_block_start/delta/stop, message_delta with the stop reason,
/// message_stop.
fn sse(model: &str, blocks: &[Value], stop: &str) -> String {
    let mut out = String::new();
    let mut event = |name: &str, data: Value| {
        out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    );
    for (i, b) in blocks.iter().enumerate() {
        let (start, delta) = if b["type"] == "tool_use" {
            (
                json!({"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}),
                json!({"type": "input_json_delta", "partial_json": b["input"].to_string()}),
            )
        } else {
            (
                json!({"type": "text", "text": ""}),
                json!({"type": "text_delta", "text": b["text"]}),
            )
        };
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": start}),
        );
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": i, "delta": delta}),
        );
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        );
    }
    event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": 10}}),
    );
    event("message_stop", json!({"type": "message_stop"}));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends raw `req` on a fresh connection and reads until the mock
    /// closes it (every request here asks for `Connection: close`).
    fn exchange(api: &MockApi, req: &[u8]) -> String {
        let Ok(mut s) = TcpStream::connect(api.addr) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.write_all(req);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn post(target: &str, body: &Value) -> Vec<u8> {
        let b = body.to_string();
        format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )
        .into_bytes()
    }

    fn bash_tool() -> Value {
        json!([{"name": "Bash", "input_schema": {"type": "object",
            "properties": {"command": {"type": "string"}}, "required": ["command"]}}])
    }

    #[test]
    fn a_turn_is_a_tool_call_then_the_answer() {
        let api = MockApi::start(Ipv4Addr::LOCALHOST).expect("mock");
        let first = json!({"model": "m", "stream": true, "tools": bash_tool(),
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        let out = exchange(&api, &post("/v1/messages?beta=true", &first));
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("text/event-stream"), "{out}");
        let order: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            order,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(out.contains(r#""stop_reason":"tool_use""#), "{out}");
        assert!(out.contains("proof.txt"), "{out}");

        let mut second = first.clone();
        second["messages"] = json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]},
        ]);
        // The absolute form, as a proxy may pass it on.
        let out = exchange(&api, &post("http://h:1/v1/messages", &second));
        assert!(out.contains(r#""stop_reason":"end_turn""#), "{out}");
        assert!(out.contains(FINAL_TEXT), "{out}");

        let seen = api.requests();
        assert_eq!(
            seen.iter().map(|s| s.answered).collect::<Vec<_>>(),
            ["tool_use", "final"]
        );
        assert_eq!(seen[0].first_texts, ["hi"]);
        assert!(seen[0].bash_schema.is_some());
    }

    #[test]
    fn side_requests_unknown_paths_and_bad_input() {
        let api = MockApi::start(Ipv4Addr::LOCALHOST).expect("mock");
        let plain = json!({"model": "m", "messages": [{"role": "user", "content": "title?"}]});
        let out = exchange(&api, &post("/v1/messages", &plain));
        assert!(out.contains(r#""type":"message""#), "non-streamed: {out}");
        let out = exchange(
            &api,
            b"GET /api/hello HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        let out = exchange(
            &api,
            b"POST /v1/messages HTTP/1.1\r\nConnection: close\r\nContent-Length: 3\r\n\r\n{x}",
        );
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        // Over the body bound: dropped without an answer (and not read).
        let big = format!(
            "POST /v1/messages HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(exchange(&api, big.as_bytes()), "");
        // A head that never ends within the bound.
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(exchange(&api, &long), "");
        assert_eq!(api.requests().len(), 3);
        assert!(MockApi::start(Ipv4Addr::new(10, 0, 0, 1)).is_err());
    }
}
