//! AMQP tables to and from [`Headers`]: every integer width becomes an `i64`, every float a
//! `f64`, long strings that are not UTF-8 stay bytes.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::headers::{HeaderValue, Headers};

/// A message's headers, converted (none: empty).
pub fn headers_of(props: &BasicProperties) -> Headers {
    props
        .headers()
        .as_ref()
        .map(headers_from_table)
        .unwrap_or_default()
}

/// Convert an AMQP table to [`Headers`].
pub fn headers_from_table(t: &FieldTable) -> Headers {
    t.inner()
        .iter()
        .map(|(k, v)| (k.to_string(), header_value(v)))
        .collect()
}

fn header_value(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Timestamp(t) => HeaderValue::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
        AMQPValue::Float(f) => HeaderValue::Float(f64::from(*f)),
        AMQPValue::Double(f) => HeaderValue::Float(*f),
        AMQPValue::DecimalValue(d) => {
            HeaderValue::Float(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => HeaderValue::Str(s.to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => HeaderValue::Str(text.to_string()),
            Err(_) => HeaderValue::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::FieldArray(a) => {
            HeaderValue::Array(a.as_slice().iter().map(header_value).collect())
        }
        AMQPValue::FieldTable(t) => HeaderValue::Table(headers_from_table(t)),
        AMQPValue::ByteArray(b) => HeaderValue::Bytes(b.as_slice().to_vec()),
        AMQPValue::Void => HeaderValue::Bytes(Vec::new()),
    }
}

/// Convert [`Headers`] to an AMQP table (strings become long strings).
pub fn table_from_headers(h: &Headers) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in h {
        t.insert(ShortString::from(k.as_str()), amqp_value(v));
    }
    t
}

pub(crate) fn amqp_value(v: &HeaderValue) -> AMQPValue {
    match v {
        HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
        HeaderValue::Float(f) => AMQPValue::Double(*f),
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::Table(t) => AMQPValue::FieldTable(table_from_headers(t)),
        HeaderValue::Array(a) => {
            let mut arr = FieldArray::default();
            for x in a {
                arr.push(amqp_value(x));
            }
            AMQPValue::FieldArray(arr)
        }
        HeaderValue::Bytes(b) => AMQPValue::ByteArray(b.clone().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_convert_both_ways() {
        let mut report = Headers::new();
        report.insert("code".into(), HeaderValue::Int(204));
        let mut h = Headers::new();
        h.insert("source".into(), HeaderValue::Str("ec_cmc".into()));
        h.insert("report".into(), HeaderValue::Table(report));
        h.insert("flag".into(), HeaderValue::Bool(true));
        assert_eq!(headers_from_table(&table_from_headers(&h)), h);
    }
}
