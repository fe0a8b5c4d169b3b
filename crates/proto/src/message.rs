//! Client → relay messages (decoding) and relay → client messages (encoding).

use crate::{Event, Filter, Hex32};
use serde_json::value::RawValue;
use serde_json::Value;

/// A decoded client message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Event(Box<Event>),
    Req {
        sub_id: String,
        filters: Vec<Filter>,
    },
    Count {
        sub_id: String,
        filters: Vec<Filter>,
    },
    Close(String),
    Auth(Box<Event>),
}

/// Why a message could not be decoded, with what is needed to answer it properly: an `OK` needs
/// the event id, a `CLOSED` needs the subscription id, anything else gets a `NOTICE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// `EVENT`/`AUTH` whose event is malformed; `id` is the id it claimed, when readable.
    BadEvent { id: Option<String>, reason: String },
    /// `REQ`/`COUNT` with a readable subscription id but bad filters.
    BadFilter { sub_id: String, reason: String },
    /// Anything else: not JSON, not an array, unknown command, bad subscription id.
    Malformed(String),
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::BadEvent { reason, .. } => write!(f, "invalid: {reason}"),
            MessageError::BadFilter { reason, .. } => write!(f, "invalid: {reason}"),
            MessageError::Malformed(reason) => write!(f, "invalid: {reason}"),
        }
    }
}

fn malformed<T>(msg: impl Into<String>) -> Result<T, MessageError> {
    Err(MessageError::Malformed(msg.into()))
}

impl ClientMessage {
    /// Decodes one text frame. Never panics, whatever the input.
    pub fn parse(text: &str) -> Result<ClientMessage, MessageError> {
        let parts: Vec<&RawValue> = match serde_json::from_str(text) {
            Ok(p) => p,
            Err(_) => return malformed("message must be a JSON array"),
        };
        let Some(first) = parts.first() else {
            return malformed("empty message");
        };
        let command: String = match serde_json::from_str(first.get()) {
            Ok(c) => c,
            Err(_) => return malformed("first element must be a command string"),
        };
        match command.as_str() {
            "EVENT" | "AUTH" => {
                if parts.len() != 2 {
                    return malformed(format!("{command} takes exactly one event"));
                }
                let ev = parse_event(parts[1])?;
                Ok(if command == "EVENT" {
                    ClientMessage::Event(Box::new(ev))
                } else {
                    ClientMessage::Auth(Box::new(ev))
                })
            }
            "REQ" | "COUNT" => {
                if parts.len() < 3 {
                    return malformed(format!("{command} needs a subscription id and a filter"));
                }
                let sub_id = parse_sub_id(parts[1])?;
                let mut filters = Vec::with_capacity(parts.len() - 2);
                for raw in &parts[2..] {
                    let parsed = serde_json::from_str::<Value>(raw.get())
                        .map_err(|e| e.to_string())
                        .and_then(|v| Filter::from_value(&v).map_err(|e| e.0));
                    match parsed {
                        Ok(f) => filters.push(f),
                        Err(reason) => {
                            return Err(MessageError::BadFilter { sub_id, reason });
                        }
                    }
                }
                Ok(if command == "REQ" {
                    ClientMessage::Req { sub_id, filters }
                } else {
                    ClientMessage::Count { sub_id, filters }
                })
            }
            "CLOSE" => {
                if parts.len() != 2 {
                    return malformed("CLOSE takes exactly one subscription id");
                }
                Ok(ClientMessage::Close(parse_sub_id(parts[1])?))
            }
            other => malformed(format!("unknown command {}", truncate(other, 32))),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn parse_sub_id(raw: &RawValue) -> Result<String, MessageError> {
    match serde_json::from_str::<String>(raw.get()) {
        Ok(s) if !s.is_empty() => Ok(s),
        Ok(_) => malformed("subscription id must not be empty"),
        Err(_) => malformed("subscription id must be a string"),
    }
}

fn parse_event(raw: &RawValue) -> Result<Event, MessageError> {
    serde_json::from_str::<Event>(raw.get()).map_err(|e| {
        // Recover the claimed id so the client gets an OK it can match.
        let id = serde_json::from_str::<Value>(raw.get())
            .ok()
            .and_then(|v| v.get("id")?.as_str().map(str::to_owned))
            .filter(|s| Hex32::from_hex(s).is_some());
        let reason = e.to_string();
        let reason = reason
            .split(" at line")
            .next()
            .unwrap_or(&reason)
            .to_owned();
        MessageError::BadEvent {
            id,
            reason: format!("malformed event: {reason}"),
        }
    })
}

/// Relay → client messages, encoded straight to JSON text.
pub mod relay {
    use serde_json::json;

    /// `["EVENT", sub, event]` around an already-serialised event (serialised once per event,
    /// reused for every subscriber).
    ///
    /// One allocation of the frame's exact size: live fan-out builds one per subscriber. A sub
    /// id that needs no JSON escaping (the usual case) is copied as it is.
    pub fn event(sub_id: &str, event_json: &str) -> String {
        let plain = sub_id.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
        let escaped;
        let sub = if plain {
            sub_id
        } else {
            escaped = serde_json::to_string(sub_id).expect("string serialises");
            &escaped[1..escaped.len() - 1]
        };
        let mut s = String::with_capacity(event_json.len() + sub.len() + 14);
        s.push_str("[\"EVENT\",\"");
        s.push_str(sub);
        s.push_str("\",");
        s.push_str(event_json);
        s.push(']');
        s
    }
    pub fn ok(event_id: &str, accepted: bool, message: &str) -> String {
        json!(["OK", event_id, accepted, message]).to_string()
    }
    pub fn eose(sub_id: &str) -> String {
        json!(["EOSE", sub_id]).to_string()
    }
    pub fn closed(sub_id: &str, message: &str) -> String {
        json!(["CLOSED", sub_id, message]).to_string()
    }
    pub fn notice(message: &str) -> String {
        json!(["NOTICE", message]).to_string()
    }
    pub fn count(sub_id: &str, count: u64) -> String {
        json!(["COUNT", sub_id, {"count": count}]).to_string()
    }
    /// A NIP-45 count flagged `approximate` (the relay stopped counting at a bound).
    pub fn count_approximate(sub_id: &str, count: u64) -> String {
        json!(["COUNT", sub_id, {"count": count, "approximate": true}]).to_string()
    }
    pub fn auth(challenge: &str) -> String {
        json!(["AUTH", challenge]).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signed() -> Event {
        let k = secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng());
        Event::sign(&k, 1, 1, vec![], "x")
    }

    #[test]
    fn decodes_each_command() {
        let e = signed();
        let m = ClientMessage::parse(&format!("[\"EVENT\",{}]", e.to_json())).unwrap();
        assert_eq!(m, ClientMessage::Event(Box::new(e.clone())));
        let m = ClientMessage::parse(&format!("[\"AUTH\",{}]", e.to_json())).unwrap();
        assert_eq!(m, ClientMessage::Auth(Box::new(e)));
        let m = ClientMessage::parse(r#"["REQ","s",{"kinds":[1]},{"limit":2}]"#).unwrap();
        assert!(
            matches!(m, ClientMessage::Req { ref sub_id, ref filters } if sub_id == "s" && filters.len() == 2)
        );
        let m = ClientMessage::parse(r#"["COUNT","c",{}]"#).unwrap();
        assert!(matches!(m, ClientMessage::Count { .. }));
        assert_eq!(
            ClientMessage::parse(r#"["CLOSE","s"]"#).unwrap(),
            ClientMessage::Close("s".into())
        );
    }

    #[test]
    fn errors_carry_what_the_answer_needs() {
        let id = "a".repeat(64);
        match ClientMessage::parse(&format!(r#"["EVENT",{{"id":"{id}","kind":"x"}}]"#)) {
            Err(MessageError::BadEvent { id: Some(got), .. }) => assert_eq!(got, id),
            other => panic!("{other:?}"),
        }
        match ClientMessage::parse(r#"["REQ","sub",{"kinds":"x"}]"#) {
            Err(MessageError::BadFilter { sub_id, .. }) => assert_eq!(sub_id, "sub"),
            other => panic!("{other:?}"),
        }
        for bad in [
            "",
            "{}",
            "[]",
            "[1]",
            r#"["NOPE"]"#,
            r#"["REQ","s"]"#,
            r#"["REQ",1,{}]"#,
            r#"["CLOSE"]"#,
            "[\"EVENT\"]",
        ] {
            assert!(
                matches!(ClientMessage::parse(bad), Err(MessageError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn relay_messages_are_json() {
        let v: Value = serde_json::from_str(&relay::event("s\"1", "{\"a\":1}")).unwrap();
        assert_eq!(v[1], "s\"1");
        assert_eq!(v[2]["a"], 1);
        // Byte for byte what serialising the sub id with serde_json gives, escaped or not.
        for sub in [
            "fan",
            "",
            "s\"1",
            "a\\b",
            "tab\there",
            "\u{1}",
            "é€😀",
            "\u{7f}",
        ] {
            let quoted = serde_json::to_string(sub).unwrap();
            assert_eq!(
                relay::event(sub, "{}"),
                format!("[\"EVENT\",{quoted},{{}}]"),
                "{sub:?}"
            );
        }
        let v: Value = serde_json::from_str(&relay::count("c", 7)).unwrap();
        assert_eq!(v[2]["count"], 7);
    }

    proptest! {
        #[test]
        fn decoder_never_panics(s in ".*") {
            let _ = ClientMessage::parse(&s);
        }

        #[test]
        fn decoder_never_panics_on_near_messages(
            cmd in prop::sample::select(vec!["EVENT", "REQ", "COUNT", "CLOSE", "AUTH", "X"]),
            body in "[\\[\\]{}\",:a-z0-9#\\-]{0,80}"
        ) {
            let _ = ClientMessage::parse(&format!("[\"{cmd}\",{body}]"));
        }
    }
}
