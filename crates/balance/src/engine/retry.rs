//! When a request or a connection is tried again: the retry and replay rules of
//! the proxies (`crate::http`, `crate::connect`), pure.

/// How sending a request to a server failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// The pooled connection closed before the request went out: nothing
    /// reached the server.
    NotSent,
    /// The request went out and no answer came.
    NoAnswer { timed_out: bool },
}

/// What to do after a failed send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Send the request (or its replay copy) again on another connection.
    SendAgain,
    /// Answer the client 504 (the server timed out).
    GatewayTimeout,
    /// Answer the client 502.
    BadGateway,
}

/// A request that reached the server is repeated only when it is replayable
/// (see [`replayable`]) and the failure was not a timeout: a reused connection
/// the server had closed under it. A timeout may mean the server is still
/// working on it.
pub fn after_send_failure(failure: SendFailure, replayable: bool) -> AfterFailure {
    match failure {
        SendFailure::NotSent => AfterFailure::SendAgain,
        SendFailure::NoAnswer { timed_out: false } if replayable => AfterFailure::SendAgain,
        SendFailure::NoAnswer { timed_out: true } => AfterFailure::GatewayTimeout,
        SendFailure::NoAnswer { timed_out: false } => AfterFailure::BadGateway,
    }
}

/// Only an idempotent request without a body, sent on a reused connection (one
/// the server may have closed meanwhile), is kept to be sent again.
pub fn replayable(method: &http::Method, bodyless: bool, reused_connection: bool) -> bool {
    let idempotent = matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    );
    reused_connection && idempotent && bodyless
}

/// After failed connection attempt `attempt` (0 first), whether another server
/// is tried: up to the frontend's `retries`.
pub fn tries_another_server(attempt: u32, retries: u32) -> bool {
    attempt < retries
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn only_idempotent_bodyless_requests_on_reused_connections_are_replayed() {
        assert!(replayable(&Method::GET, true, true));
        assert!(replayable(&Method::DELETE, true, true));
        assert!(
            !replayable(&Method::GET, true, false),
            "a fresh connection failed for real"
        );
        assert!(
            !replayable(&Method::GET, false, true),
            "a streamed body is gone"
        );
        assert!(!replayable(&Method::POST, true, true));
        assert!(!replayable(&Method::PATCH, true, true));
    }

    #[test]
    fn a_failed_send_is_repeated_only_when_safe_and_not_timed_out() {
        use AfterFailure::*;
        use SendFailure::*;
        assert_eq!(after_send_failure(NotSent, false), SendAgain);
        assert_eq!(
            after_send_failure(NoAnswer { timed_out: false }, true),
            SendAgain
        );
        assert_eq!(
            after_send_failure(NoAnswer { timed_out: false }, false),
            BadGateway
        );
        assert_eq!(
            after_send_failure(NoAnswer { timed_out: true }, true),
            GatewayTimeout
        );
        assert_eq!(
            after_send_failure(NoAnswer { timed_out: true }, false),
            GatewayTimeout
        );
    }

    #[test]
    fn another_server_is_tried_up_to_the_retries() {
        assert!(!tries_another_server(0, 0));
        assert!(tries_another_server(0, 2));
        assert!(tries_another_server(1, 2));
        assert!(!tries_another_server(2, 2));
    }
}
