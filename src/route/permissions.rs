//! `dd_log2source --declare-source NAME`: a source's user, exchange and permissions, through
//! RabbitMQ's management HTTP API (the maintained `rabbitmq_http_client` crate).
//!
//! The source may read `log_<source>` and configure, write and read its own `q_<source>.*`
//! queues, and nothing else: it cannot bind to `log` or another source's exchange, cannot
//! create exchanges, cannot publish anywhere.

use anyhow::Context as _;
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::commons::ExchangeType;
use rabbitmq_http_client::password_hashing::{base64_encoded_salted_password_hash_sha256, salt};
use rabbitmq_http_client::requests::{ExchangeParams, Permissions, UserParams};

use crate::config::BrokerConfig;

/// The permission patterns of a source (configure, write, read), as RabbitMQ regexes.
pub fn source_permissions(source: &str, exchange: &str) -> (String, String, String) {
    let own = format!("^q_{}\\..*", regex::escape(source));
    let read = format!(
        "^(q_{}\\..*|{})$",
        regex::escape(source),
        regex::escape(exchange)
    );
    (own.clone(), own, read)
}

/// A management API client logged in as the broker URL's user.
pub fn client(
    management_url: &str,
    broker: &BrokerConfig,
) -> anyhow::Result<Client<String, String, String>> {
    let uri = crate::broker::BrokerUrl::parse(broker.urls().first().copied().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("bad broker URL: {e}"))?;
    Ok(Client::new(
        management_url.trim_end_matches('/').to_string(),
        uri.user,
        uri.password,
    ))
}

/// The vhost of the broker URL.
pub fn vhost(broker: &BrokerConfig) -> String {
    crate::broker::BrokerUrl::parse(broker.urls().first().copied().unwrap_or_default())
        .map(|u| u.vhost)
        .unwrap_or_else(|_| "/".to_string())
}

/// Create (when `password` is given) the user `source`, declare its exchange, and set its
/// permissions on the broker URL's vhost.
pub async fn declare_source(
    api: &Client<String, String, String>,
    vhost: &str,
    source: &str,
    exchange: &str,
    password: Option<&str>,
) -> anyhow::Result<()> {
    if let Some(pw) = password {
        let hash = base64_encoded_salted_password_hash_sha256(&salt(), pw);
        api.create_user(&UserParams::new(source, &hash, ""))
            .await
            .with_context(|| format!("cannot create user {source:?}"))?;
    }
    api.declare_exchange(
        vhost,
        &ExchangeParams::durable(exchange, ExchangeType::Topic, None),
    )
    .await
    .with_context(|| format!("cannot declare exchange {exchange:?} in vhost {vhost:?}"))?;
    let (configure, write, read) = source_permissions(source, exchange);
    api.declare_permissions(&Permissions {
        user: source,
        vhost,
        configure: &configure,
        read: &read,
        write: &write,
    })
    .await
    .with_context(|| format!("cannot set the permissions of {source:?} in vhost {vhost:?}"))?;
    tracing::info!(
        source,
        exchange,
        vhost,
        configure,
        write,
        read,
        "source declared"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_only_the_sources_own_things() {
        let (configure, write, read) = source_permissions("ec.cmc", "log_ec.cmc");
        let re = |p: &str| regex::Regex::new(p).unwrap();
        assert!(re(&configure).is_match("q_ec.cmc.dd_log.tail"));
        assert!(!re(&configure).is_match("q_ecXcmc.dd_log.tail"));
        assert!(!re(&configure).is_match("log_ec.cmc"));
        assert_eq!(configure, write);
        assert!(re(&read).is_match("log_ec.cmc"));
        assert!(re(&read).is_match("q_ec.cmc.x"));
        assert!(!re(&read).is_match("log"));
        assert!(!re(&read).is_match("log_other"));
        assert!(!re(&read).is_match("log_ec.cmc2"));
    }
}
