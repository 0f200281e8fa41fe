//! What went wrong talking to the broker, as data: a kind, and the AMQP reply code when the
//! broker gave one. Callers match on [`ErrorKind`] (or [`BrokerError::code`]), never on the
//! text, so a lapin upgrade that rewords a message cannot change what a tool does; the text
//! is kept only for the one line an operator reads.
//!
//! Also here: the timeouts that bound every broker operation, and [`bounded`], which applies
//! them and classifies lapin's error on the way out.

use std::time::Duration;

/// What kind of failure: decides whether a retry can help and what a tool tells its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A login or a permission refused: 403 ACCESS_REFUSED, 530 NOT_ALLOWED (an unknown vhost,
    /// a user the vhost does not allow), or the login itself refused at connection.
    Refused,
    /// 404 NOT_FOUND: no such exchange or queue (or a durable queue whose node is down).
    NotFound,
    /// 406 PRECONDITION_FAILED: it exists with other arguments (a classic queue asked for as
    /// quorum, a fanout exchange asked for as topic).
    Precondition,
    /// Any other refusal no retry changes: 402 invalid path, 501-505 and 540 protocol errors,
    /// a broker certificate that cannot be verified.
    Rejected,
    /// The broker cannot be reached, or went away (retried by the reconnect loops).
    Unreachable,
    /// The broker did not answer in time (retried, like [`ErrorKind::Unreachable`]).
    Timeout,
    /// A local problem: an unreadable CA file, a runtime that cannot start.
    Setup,
}

/// A failure talking to the broker: its kind, the broker's reply code, and its reason.
#[derive(Debug, Clone)]
pub struct BrokerError {
    kind: ErrorKind,
    code: Option<u16>,
    text: String,
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ErrorKind::Setup => write!(f, "{}", self.text),
            ErrorKind::Unreachable | ErrorKind::Timeout => {
                write!(f, "broker unreachable: {}", self.text)
            }
            _ => write!(f, "broker refused: {}", self.text),
        }
    }
}

impl std::error::Error for BrokerError {}

impl BrokerError {
    /// A failure of this kind, with no reply code.
    pub fn new(kind: ErrorKind, text: impl Into<String>) -> BrokerError {
        BrokerError {
            kind,
            code: None,
            text: text.into(),
        }
    }

    /// A local problem (see [`ErrorKind::Setup`]).
    pub fn setup(text: impl Into<String>) -> BrokerError {
        BrokerError::new(ErrorKind::Setup, text)
    }

    /// The broker went away (see [`ErrorKind::Unreachable`]).
    pub fn unreachable(text: impl Into<String>) -> BrokerError {
        BrokerError::new(ErrorKind::Unreachable, text)
    }

    /// The broker did not answer in time (see [`ErrorKind::Timeout`]).
    pub fn timeout(text: impl Into<String>) -> BrokerError {
        BrokerError::new(ErrorKind::Timeout, text)
    }

    /// What kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The AMQP reply code the broker closed with (403, 404, 406, 530...), if it gave one.
    pub fn code(&self) -> Option<u16> {
        self.code
    }

    /// The broker's reason, without the "broker refused:" prefix.
    pub fn reason(&self) -> &str {
        &self.text
    }

    /// Can a retry help?
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Unreachable | ErrorKind::Timeout)
    }

    /// Access refused (403) or not allowed (530): a login or permission no retry can mend
    /// (unlike, say, an exchange not declared yet).
    pub fn denies_access(&self) -> bool {
        self.kind == ErrorKind::Refused
    }

    /// The object named does not exist (404 "no queue", "no exchange"), as opposed to a
    /// durable queue that exists on a node that is down (also 404 for RabbitMQ). The reply
    /// code cannot tell the two apart; RabbitMQ's reason can, and this is the one place that
    /// reads it.
    pub fn is_absent(&self) -> bool {
        self.kind == ErrorKind::NotFound && self.text.starts_with("NOT_FOUND - no ")
    }

    /// The same error with `; <note>` after its reason.
    pub(crate) fn noting(mut self, note: &str) -> BrokerError {
        self.text = format!("{}; {note}", self.text);
        self
    }

    /// The same error, its reason followed by ` at <url>` (the URL already masked).
    pub fn at(mut self, masked_url: &str) -> BrokerError {
        if !matches!(self.kind, ErrorKind::Setup) {
            self.text = format!("{} at {masked_url}", self.text);
        }
        self
    }
}

/// The kind of an AMQP reply code that closed a channel or connection.
fn kind_of_code(code: u16) -> ErrorKind {
    match code {
        // connection forced, frame/syntax/command errors, channel errors, resource errors,
        // internal errors: the connection is gone, a new one may do
        320 | 311 | 312 | 313 | 504 | 506 | 541 => ErrorKind::Unreachable,
        403 | 530 => ErrorKind::Refused,
        404 => ErrorKind::NotFound,
        406 => ErrorKind::Precondition,
        _ => ErrorKind::Rejected,
    }
}

/// Sort a lapin error into a kind. A broker reply code decides where there is one; a
/// certificate that cannot be verified (unknown CA, wrong host name, expired) will not
/// verify on the next try either.
pub(crate) fn classify(e: lapin::Error) -> BrokerError {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        let code = amqp.get_id();
        return BrokerError {
            kind: kind_of_code(code),
            code: Some(code),
            text: format!("{} ({code})", amqp.get_message()),
        };
    }
    match e.kind() {
        lapin::ErrorKind::AuthProviderError(msg) => BrokerError::new(ErrorKind::Refused, msg),
        _ => {
            let text = e.to_string();
            if is_certificate_error(&text) {
                BrokerError::new(
                    ErrorKind::Rejected,
                    format!(
                        "TLS: the broker's certificate was refused ({text}); give the CA that \
                         signs it with --tls-ca, and a host name it names"
                    ),
                )
            } else {
                BrokerError::unreachable(text)
            }
        }
    }
}

/// Does a connection error say the broker's certificate could not be verified? (rustls
/// reports it as an I/O error with no code of its own.)
fn is_certificate_error(text: &str) -> bool {
    text.contains("invalid peer certificate") || text.contains("certificate verify failed")
}

/// How long one connection attempt may take (TCP, TLS and the AMQP handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a declaration, a channel opening or a close may take. A broker coming back from a
/// restart can leave a half-open connection that never answers: the operation then fails
/// (and is retried on a new connection) instead of hanging the tool.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the broker may take to confirm a batch before it is published again on a new
/// connection.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long declaring a queue, binding it and subscribing may take (quorum queues in a
/// cluster missing a node are slow to declare).
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an ack or reject may take to be handed to the connection.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run a broker operation with [`OPERATION_TIMEOUT`].
pub(crate) async fn bounded<T>(
    op: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, op).await {
        Ok(r) => r.map_err(classify),
        Err(_) => Err(BrokerError::timeout(format!(
            "the broker did not answer within {OPERATION_TIMEOUT:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_decide_the_kind() {
        assert_eq!(kind_of_code(403), ErrorKind::Refused);
        assert_eq!(kind_of_code(530), ErrorKind::Refused);
        assert_eq!(kind_of_code(404), ErrorKind::NotFound);
        assert_eq!(kind_of_code(406), ErrorKind::Precondition);
        assert_eq!(kind_of_code(320), ErrorKind::Unreachable);
        assert_eq!(kind_of_code(402), ErrorKind::Rejected);
    }

    #[test]
    fn the_line_an_operator_reads_is_unchanged() {
        let e = BrokerError {
            kind: ErrorKind::Refused,
            code: Some(403),
            text: "ACCESS_REFUSED - no (403)".into(),
        };
        assert_eq!(e.to_string(), "broker refused: ACCESS_REFUSED - no (403)");
        assert!(e.denies_access() && !e.is_transient());
        let e = BrokerError::timeout("no answer").at("amqp://u:****@h/%2f");
        assert_eq!(
            e.to_string(),
            "broker unreachable: no answer at amqp://u:****@h/%2f"
        );
        assert!(e.is_transient());
        assert_eq!(BrokerError::setup("bad CA").to_string(), "bad CA");
    }

    #[test]
    fn absent_is_no_queue_not_a_node_down() {
        let no = BrokerError {
            kind: ErrorKind::NotFound,
            code: Some(404),
            text: "NOT_FOUND - no queue 'q' in vhost '/' (404)".into(),
        };
        let down = BrokerError {
            kind: ErrorKind::NotFound,
            code: Some(404),
            text: "NOT_FOUND - home node 'rabbit@x' of durable queue 'q' in vhost '/' is down \
                   or inaccessible (404)"
                .into(),
        };
        assert!(no.is_absent());
        assert!(!down.is_absent());
    }
}
