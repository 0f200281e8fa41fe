//! The transport of a question: publish a request through RabbitMQ's direct reply-to and
//! collect the replies that come back in time. What a request and a reply mean is `rpc`'s.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;

use super::Link;
use super::connect::random_u64;
use super::error::{BrokerError, classify};

/// A reply to a request, as bytes (`rpc::Reply<T>` is what it means).
#[derive(Debug, Clone)]
pub struct RawReply {
    /// The reply's body.
    pub body: Vec<u8>,
}

/// Publish a request to `exchange` with `routing_key` and collect the replies that arrive
/// within `wait` (through RabbitMQ's direct reply-to), stopping early after `max` replies.
pub async fn request(
    conn: &Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    wait: Duration,
    max: Option<usize>,
) -> Result<Vec<RawReply>, BrokerError> {
    request_each(
        conn,
        exchange,
        std::slice::from_ref(&routing_key.to_string()),
        body,
        wait,
        max,
    )
    .await
}

/// Publish the same request to each of `routing_keys` (one reply-to, one correlation id)
/// and collect the replies that arrive within `wait`, stopping early after `max`.
pub async fn request_each(
    conn: &Connection,
    exchange: &str,
    routing_keys: &[String],
    body: &[u8],
    wait: Duration,
    max: Option<usize>,
) -> Result<Vec<RawReply>, BrokerError> {
    const REPLY_TO: &str = "amq.rabbitmq.reply-to";
    let ch = conn.create_channel().await.map_err(classify)?;
    let mut replies = ch
        .basic_consume(
            REPLY_TO.into(),
            format!("request.{:08x}", random_u64() as u32)
                .as_str()
                .into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(classify)?;
    let id = format!("{:016x}", random_u64());
    let props = BasicProperties::default()
        .with_reply_to(REPLY_TO.into())
        .with_correlation_id(id.as_str().into())
        .with_content_type("application/json".into());
    for routing_key in routing_keys {
        ch.basic_publish(
            exchange.into(),
            routing_key.as_str().into(),
            BasicPublishOptions::default(),
            body,
            props.clone(),
        )
        .await
        .map_err(classify)?;
    }
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while max.is_none_or(|m| out.len() < m) {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(classify(e)),
            Ok(Some(Ok(d))) => {
                let matches = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .is_some_and(|c| c.as_str() == id);
                if matches {
                    out.push(RawReply { body: d.data });
                }
            }
        }
    }
    let _ = ch.close(200, "OK".into()).await;
    Ok(out)
}

impl Link {
    /// Ask on this connection (see [`request`]).
    pub async fn request(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        wait: Duration,
        max: Option<usize>,
    ) -> Result<Vec<RawReply>, BrokerError> {
        request(&self.conn, exchange, routing_key, body, wait, max).await
    }

    /// Ask each of `routing_keys` on this connection (see [`request_each`]).
    pub async fn request_each(
        &self,
        exchange: &str,
        routing_keys: &[String],
        body: &[u8],
        wait: Duration,
    ) -> Result<Vec<RawReply>, BrokerError> {
        let max = Some(routing_keys.len());
        request_each(&self.conn, exchange, routing_keys, body, wait, max).await
    }
}
