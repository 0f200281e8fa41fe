//! Message headers as ddmon sees them: a map of name to [`HeaderValue`]. A leaf: the broker
//! converts AMQP tables to and from it, the record parser reads it, and neither knows the
//! other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A header value, as far as ddmon cares: AMQP tables converted by the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    /// A string (short or long string).
    Str(String),
    /// Any integer type.
    Int(i64),
    /// Any floating point or decimal type.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A nested table (sr3 puts its `report` here).
    Table(Headers),
    /// An array.
    Array(Vec<HeaderValue>),
    /// Raw bytes, or a type ddmon does not interpret.
    Bytes(Vec<u8>),
}

impl HeaderValue {
    /// The value as text when it is a string (or bytes that are UTF-8).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            HeaderValue::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Message headers: name to value.
pub type Headers = BTreeMap<String, HeaderValue>;
