//! What may stop a running statement: a CancelRequest for this connection,
//! `statement_timeout`, or server shutdown.
//!
//! One [`Interrupt`] is armed per statement (per Execute in the extended
//! protocol, as in PostgreSQL) and wraps both the execution and the
//! streaming of its results, so that a slow scan is stopped wherever it is.

use std::future::{pending, Future};
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use pgwire::api::{ClientInfo, ConnectionHandle};
use pgwire::error::{PgWireError, PgWireResult};
use sluice_planner::{sqlstate, Error};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{fatal, to_wire};

/// How often a running statement checks that its client is still there.
const CLIENT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct Interrupt {
    cancel: Option<oneshot::Receiver<()>>,
    deadline: Option<Instant>,
    shutdown: CancellationToken,
    /// A second handle on the client's socket, to notice a client that
    /// hung up while a statement runs without writing anything.
    probe: Option<Arc<TcpStream>>,
}

impl Interrupt {
    /// Arms the interrupt for a new statement. A cancel request that arrived
    /// before this point was for an earlier statement and is forgotten.
    pub(crate) async fn arm<C: ClientInfo>(
        client: &C,
        timeout: Option<Duration>,
        shutdown: &CancellationToken,
        probe: Option<Arc<TcpStream>>,
    ) -> Self {
        let cancel = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
            Some(handle) => Some(handle.start_query().await),
            None => None,
        };
        Self {
            cancel,
            deadline: timeout.map(|t| Instant::now() + t),
            shutdown: shutdown.clone(),
            probe,
        }
    }

    /// Resolves when the statement must stop, with the error to report.
    pub(crate) async fn fired(&mut self) -> PgWireError {
        let Self {
            cancel,
            deadline,
            shutdown,
            probe,
        } = self;
        let canceled_now = async {
            match cancel.as_mut() {
                // A dropped sender only means a newer statement took over the
                // handle; only an actual send is a cancel.
                Some(rx) => match rx.await {
                    Ok(()) => (),
                    Err(_) => pending().await,
                },
                None => pending().await,
            }
        };
        let timeout = async {
            match *deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => pending().await,
            }
        };
        let hung_up = async {
            match probe {
                Some(socket) => wait_for_hangup(socket).await,
                None => pending().await,
            }
        };
        let error = tokio::select! {
            () = canceled_now => None,
            () = timeout => Some(timed_out()),
            () = shutdown.cancelled() => Some(shutting_down()),
            () = hung_up => Some(client_gone()),
        };
        error.unwrap_or_else(|| {
            // The receiver has fired; a second wait must not see it again.
            *cancel = None;
            canceled()
        })
    }

    /// Runs `work` unless the statement is interrupted first; dropping
    /// `work` stops it (DataFusion streams and pgwire sinks are cancel-safe).
    pub(crate) async fn run<T>(
        &mut self,
        work: impl Future<Output = PgWireResult<T>>,
    ) -> PgWireResult<T> {
        tokio::select! {
            // A statement whose deadline has passed fails even if its result
            // became ready in the same wake-up.
            biased;
            error = self.fired() => Err(error),
            result = work => result,
        }
    }

    /// A non-blocking check, for work driven by client messages (COPY FROM
    /// STDIN) rather than by a future.
    pub(crate) fn check(&mut self) -> PgWireResult<()> {
        if let Some(rx) = self.cancel.as_mut() {
            if let Ok(Some(())) = rx.try_recv() {
                self.cancel = None;
                return Err(canceled());
            }
        }
        if self.deadline.is_some_and(|at| Instant::now() >= at) {
            return Err(timed_out());
        }
        if self.shutdown.is_cancelled() {
            return Err(shutting_down());
        }
        Ok(())
    }
}

/// Resolves once the peer has closed the connection. The socket is
/// non-blocking (shared with tokio's handle), so a peek never waits: no data
/// is `WouldBlock`, pending messages are data, end of stream is 0 bytes.
///
/// The first look is one interval in: a statement that ends sooner has no
/// need of it, and a timer due at once would wake the runtime's driver
/// (an eventfd write and an extra poll) on every statement.
async fn wait_for_hangup(socket: &TcpStream) {
    let mut ticks = tokio::time::interval_at(
        Instant::now() + CLIENT_CHECK_INTERVAL,
        CLIENT_CHECK_INTERVAL,
    );
    loop {
        ticks.tick().await;
        match socket.peek(&mut [0u8; 1]) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn client_gone() -> PgWireError {
    fatal(Error::new(
        sqlstate::CONNECTION_FAILURE,
        "terminating statement: the client closed the connection",
    ))
}

fn canceled() -> PgWireError {
    to_wire(Error::new(
        sqlstate::QUERY_CANCELED,
        "canceling statement due to user request",
    ))
}

fn timed_out() -> PgWireError {
    to_wire(Error::new(
        sqlstate::QUERY_CANCELED,
        "canceling statement due to statement timeout",
    ))
}

pub(crate) fn shutting_down() -> PgWireError {
    fatal(Error::new(
        sqlstate::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::normalize;

    fn code(mut error: PgWireError) -> String {
        normalize(&mut error).0
    }

    #[tokio::test]
    async fn timeout_fires_with_query_canceled() {
        let mut interrupt = Interrupt {
            cancel: None,
            deadline: Some(Instant::now() + Duration::from_millis(20)),
            shutdown: CancellationToken::new(),
            probe: None,
        };
        let result = interrupt
            .run(async { pending::<PgWireResult<()>>().await })
            .await;
        let mut error = result.unwrap_err();
        let (code, fatal) = normalize(&mut error);
        assert_eq!((code.as_str(), fatal), ("57014", false));
        assert!(error.to_string().contains("statement timeout"));
    }

    #[tokio::test]
    async fn cancel_fires_and_a_replaced_sender_does_not() {
        let (tx, rx) = oneshot::channel();
        let mut interrupt = Interrupt {
            cancel: Some(rx),
            deadline: None,
            shutdown: CancellationToken::new(),
            probe: None,
        };
        tx.send(()).unwrap();
        let error = interrupt
            .run(async { pending::<PgWireResult<()>>().await })
            .await
            .unwrap_err();
        assert!(error.to_string().contains("user request"), "{error}");

        let (tx, rx) = oneshot::channel::<()>();
        let mut interrupt = Interrupt {
            cancel: Some(rx),
            deadline: None,
            shutdown: CancellationToken::new(),
            probe: None,
        };
        drop(tx);
        let value = interrupt.run(async { Ok(7) }).await.unwrap();
        assert_eq!(value, 7);
        assert!(interrupt.check().is_ok());
    }

    #[tokio::test]
    async fn shutdown_is_fatal() {
        let shutdown = CancellationToken::new();
        let mut interrupt = Interrupt {
            cancel: None,
            deadline: None,
            shutdown: shutdown.clone(),
            probe: None,
        };
        shutdown.cancel();
        let error = interrupt.check().unwrap_err();
        assert_eq!(code(error), "57P01");
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_interrupts_the_statement() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut interrupt = Interrupt {
            cancel: None,
            deadline: None,
            shutdown: CancellationToken::new(),
            probe: Some(Arc::new(server)),
        };
        drop(client);
        let started = std::time::Instant::now();
        let error = interrupt
            .run(async { pending::<PgWireResult<()>>().await })
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(error.to_string().contains("08006"), "{error}");
    }
}
