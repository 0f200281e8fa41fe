//! `dd_log2source --declare-source NAME`: a source's user, exchange and permissions, through
//! RabbitMQ's management HTTP API (the maintained `rabbitmq_http_client` crate).
//!
//! The source may read `log_<source>` and configure, write and read its own `q_<source>.*`
//! queues, and nothing else: it cannot bind to `log` or another source's exchange, cannot
//! create exchanges, cannot publish anywhere.

use anyhow::Context as _;
use rabbitmq_http_client::api::{Client, HttpClientError};
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

/// What the management API said, in one line an operator can act on: the URL it tried and
/// the cause when it does not answer, the status and the broker's reason when it refused.
pub fn api_error(e: &HttpClientError, management_url: &str) -> String {
    use rabbitmq_http_client::error::Error;
    match e {
        Error::RequestError { error, .. } => {
            let mut cause = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(s) = source {
                cause = format!("{cause}: {s}");
                source = s.source();
            }
            format!(
                "the management API at {management_url} does not answer ({cause}): enable it \
                 (rabbitmq-plugins enable rabbitmq_management) or give its address with \
                 --management-url"
            )
        }
        Error::ClientErrorResponse {
            status_code,
            error_details,
            body,
            ..
        }
        | Error::ServerErrorResponse {
            status_code,
            error_details,
            body,
            ..
        } => {
            let reason = error_details
                .as_ref()
                .and_then(|d| d.reason().map(str::to_string))
                .or_else(|| body.clone())
                .unwrap_or_default();
            let hint = if status_code.as_u16() == 401 {
                ": the broker URL's user must be an administrator (tag administrator)"
            } else {
                ""
            };
            format!("the management API at {management_url} answered {status_code} {reason}{hint}")
        }
        other => format!("the management API at {management_url}: {other}"),
    }
}

/// Create (when `password` is given) the user `source`, declare its exchange, and set its
/// permissions on the broker URL's vhost. Everything is checked first (the API answers and
/// lets this user in, the vhost exists, the user exists or a password to create it is
/// given): nothing is created when a check fails.
pub async fn declare_source(
    api: &Client<String, String, String>,
    management_url: &str,
    vhost: &str,
    source: &str,
    exchange: &str,
    password: Option<&str>,
) -> anyhow::Result<()> {
    let said = |e: HttpClientError| anyhow::anyhow!(api_error(&e, management_url));
    api.current_user().await.map_err(said)?;
    match api.get_vhost(vhost).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => anyhow::bail!(
            "the vhost {vhost:?} (the broker URL's) does not exist: create it first \
             (rabbitmqctl add_vhost {vhost})"
        ),
        Err(e) => return Err(said(e)),
    }
    let exists = match api.get_user(source).await {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(said(e)),
    };
    if !exists && password.is_none() {
        return Err(crate::config::ConfigError::Invalid {
            field: "--declare-source",
            message: format!(
                "the user {source:?} does not exist: give --source-password-file FILE (its \
                 first line the password) to create it"
            ),
        }
        .into());
    }
    if let Some(pw) = password {
        let hash = base64_encoded_salted_password_hash_sha256(&salt(), pw);
        api.create_user(&UserParams::new(source, &hash, ""))
            .await
            .map_err(said)
            .with_context(|| format!("cannot create user {source:?}"))?;
        if exists {
            tracing::info!(source, "the user existed: its password is now the file's");
        }
    }
    api.declare_exchange(
        vhost,
        &ExchangeParams::durable(exchange, ExchangeType::Topic, None),
    )
    .await
    .map_err(said)
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
    .map_err(said)
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
