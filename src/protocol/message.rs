//! Requests (`{method, id?, params}`) and replies (`{success, result|error,
//! id?}`), parsed without trusting anything in them.

use serde_json::{Map, Value};

pub struct Request {
    pub method: String,
    /// Present on a persistent pipe; echoed in the reply.
    pub id: Option<Value>,
    pub params: Value,
}

/// A request that cannot be served, with the id to answer it under if one
/// could be read.
#[derive(Debug)]
pub struct RequestError {
    pub id: Option<Value>,
    pub message: String,
}

pub fn parse_request(body: &[u8]) -> Result<Request, RequestError> {
    let fail = |id: Option<Value>, message: String| RequestError { id, message };
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| fail(None, format!("invalid JSON in request: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(fail(None, "request must be a JSON object".into()));
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::Number(_) | Value::String(_))) => Some(v),
        Some(_) => return Err(fail(None, "request id must be a number".into())),
    };
    let method = match obj.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        Some(_) => return Err(fail(id, "request method must be a non-empty string".into())),
        None => return Err(fail(id, "request has no method".into())),
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(fail(id, format!("params of {method} must be an object"))),
    };
    Ok(Request { method, id, params })
}

fn with_id(mut reply: Map<String, Value>, id: Option<Value>) -> Value {
    if let Some(id) = id {
        reply.insert("id".into(), id);
    }
    Value::Object(reply)
}

pub fn ok_reply(result: Value, id: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("success".into(), Value::Bool(true));
    m.insert("result".into(), result);
    with_id(m, id)
}

pub fn error_reply(error: &str, id: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("success".into(), Value::Bool(false));
    m.insert("error".into(), Value::String(error.to_string()));
    with_id(m, id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_refuses() {
        let r = parse_request(br#"{"method":"isRunning","id":7}"#).unwrap();
        assert_eq!(
            (r.method.as_str(), r.id, r.params),
            ("isRunning", Some(json!(7)), json!({}))
        );
        for bad in [
            &b"nope"[..],
            b"[1]",
            b"\"s\"",
            br#"{"id":1}"#,
            br#"{"method":5}"#,
            br#"{"method":"x","params":[1]}"#,
            br#"{"method":"x","id":{}}"#,
            b"\xff\xfe",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let e = parse_request(br#"{"method":"x","id":3,"params":1}"#)
            .err()
            .unwrap();
        assert_eq!(e.id, Some(json!(3)));
    }

    #[test]
    fn reply_shapes() {
        assert_eq!(
            ok_reply(json!({}), None),
            json!({"success": true, "result": {}})
        );
        assert_eq!(
            error_reply("bad", Some(json!(2))),
            json!({"success": false, "error": "bad", "id": 2})
        );
    }
}
