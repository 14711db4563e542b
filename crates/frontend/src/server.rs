//! The SQL listener: accepts connections and drives each one's messages
//! through pgwire's protocol state machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::auth::sasl::scram::{gen_salted_password, random_nonce, SCRAM_ITERATIONS};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::{
    ClientInfo, ConnectionManager, DefaultClient, PgWireConnectionState,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::response::{GssEncResponse, SslResponse};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage, SslNegotiationMetaMessage};
use pgwire::tokio::server::{process_error, process_message, PgWireMessageServerCodec};
use sluice_planner::{sqlstate, Database, Error};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::connection::{Connection, Startup};
use crate::error::fatal;
use crate::interrupt::shutting_down;
use crate::limit::LimitedIo;
use crate::query_codec::QueryCodec;
use crate::{Auth, FrontendConfig, Metrics};

/// A client must finish startup and authentication within this time.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// After shutdown, connections still writing to a client that does not read
/// are dropped after this long.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) db: Arc<Database>,
    pub(crate) config: FrontendConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) cancels: Arc<ConnectionManager>,
    /// One generator so that process ids are unique across connections.
    pub(crate) pids: Arc<RandomPidSecretKeyGenerator>,
    /// For password auth: the SCRAM salt and salted password, derived once.
    pub(crate) scram: Option<ScramSecret>,
}

pub(crate) struct ScramSecret {
    pub(crate) user: String,
    pub(crate) salt: Vec<u8>,
    pub(crate) salted_password: Vec<u8>,
}

/// Accepts SQL connections until `shutdown`, one task per connection. Then
/// stops accepting; idle connections are told 57P01 and closed, running
/// statements are interrupted with the same error.
pub async fn serve_sql(
    listener: TcpListener,
    db: Arc<Database>,
    config: FrontendConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let scram = match &config.auth {
        Auth::Trust => None,
        Auth::Password { user, password } => {
            let salt = random_nonce().into_bytes();
            let salted_password = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
            Some(ScramSecret {
                user: user.clone(),
                salt,
                salted_password,
            })
        }
    };
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let shared = Arc::new(Shared {
        db,
        config,
        metrics,
        shutdown: shutdown.clone(),
        cancels: Arc::new(ConnectionManager::new()),
        pids: Arc::new(RandomPidSecretKeyGenerator::default()),
        scram,
    });
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let permit = slots.clone().try_acquire_owned().ok();
                    tasks.spawn(serve_connection(shared.clone(), tcp, peer, permit));
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept SQL connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_join(joined),
        }
    }
    drop(listener);
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            log_join(joined);
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(
            remaining = tasks.len(),
            "dropping connections still open after shutdown grace"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        if e.is_panic() {
            tracing::error!(error = %e, "SQL connection task panicked");
        }
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
) {
    shared.metrics.connections_opened.inc();
    shared.metrics.connections_current.inc();
    let result = drive(&shared, tcp, peer, permit.is_some()).await;
    shared.metrics.connections_current.dec();
    drop(permit);
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "SQL connection ended with an error");
    }
}

/// Runs one connection's message loop: SSL refusal, startup, then queries,
/// until the client leaves, sends garbage, or the server shuts down.
async fn drive(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: bool,
) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    // A duplicate handle that statements use to notice a hung-up client.
    let std_socket = tcp.into_std()?;
    let probe = std_socket.try_clone().ok();
    let tcp = TcpStream::from_std(std_socket)?;
    let io = LimitedIo::new(tcp, shared.config.max_message_bytes);
    let mut socket = Framed::new(
        io,
        PgWireMessageServerCodec::new(DefaultClient::new(peer, false)),
    );
    let connection = Arc::new(Connection::new(shared.clone(), probe));
    let startup = Arc::new(Startup::new(connection.clone()));
    let cancel_handler = Arc::new(DefaultCancelHandler::new(shared.cancels.clone()));
    let startup_deadline = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(startup_deadline);

    loop {
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingSslRequest
                | PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        // Like PostgreSQL, the idle limit runs only while the server waits
        // for the client's next query inside a transaction block.
        let idle_limit = match socket.state() {
            PgWireConnectionState::ReadyForQuery => {
                connection.session.idle_in_transaction_timeout()
            }
            _ => None,
        };
        let idle_deadline = async {
            match idle_limit {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        // Reading goes through `QueryCodec`; pgwire's handlers below need
        // the socket with pgwire's own codec, so it is swapped back after.
        let mut reading = socket.map_codec(QueryCodec::new);
        let woken = tokio::select! {
            () = shared.shutdown.cancelled() => Woken::Shutdown,
            () = &mut startup_deadline, if starting => Woken::StartupTimeout,
            () = idle_deadline => Woken::IdleTimeout,
            message = reading.next() => Woken::Message(message),
        };
        socket = reading.map_codec(QueryCodec::into_inner);
        let message = match woken {
            Woken::Shutdown => {
                if !starting {
                    send_fatal(&mut socket, shutting_down()).await;
                }
                return Ok(());
            }
            Woken::StartupTimeout => return Ok(()),
            Woken::IdleTimeout => {
                // Dropping the connection drops its session and with it the
                // open block: nothing of it was written.
                let error = Error::new(
                    sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                    "terminating connection due to idle-in-transaction timeout",
                );
                connection.record_error(&mut fatal(error.clone()));
                send_fatal(&mut socket, fatal(error)).await;
                return Ok(());
            }
            Woken::Message(message) => message,
        };
        let message = match message {
            None => return Ok(()),
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                // Undecodable or oversized input: say why, then hang up.
                tracing::debug!(%peer, error = %e, "bad protocol message");
                let info = ErrorInfo::new(
                    "FATAL".into(),
                    sqlstate::PROTOCOL_VIOLATION.into(),
                    e.to_string(),
                );
                let _ = socket
                    .send(PgWireBackendMessage::ErrorResponse(info.into()))
                    .await;
                return Ok(());
            }
        };
        match message {
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::PostgresSsl(_)) => {
                socket
                    .send(PgWireBackendMessage::SslResponse(SslResponse::Refuse))
                    .await?;
            }
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::PostgresGss(_)) => {
                socket
                    .send(PgWireBackendMessage::GssEncResponse(GssEncResponse::Refuse))
                    .await?;
            }
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::None) => {
                socket.set_state(PgWireConnectionState::AwaitingStartup);
            }
            PgWireFrontendMessage::CancelRequest(cancel) => {
                cancel_handler.on_cancel_request(cancel).await;
                return Ok(());
            }
            PgWireFrontendMessage::Terminate(_) => return Ok(()),
            PgWireFrontendMessage::Startup(_) if !admitted => {
                let error = Error::new(TOO_MANY_CONNECTIONS, "sorry, too many clients already");
                send_fatal(&mut socket, fatal(error)).await;
                return Ok(());
            }
            message => {
                let is_extended = match socket.state() {
                    PgWireConnectionState::CopyInProgress(is_extended) => is_extended,
                    _ => message.is_extended_query(),
                };
                let result = process_message(
                    message,
                    &mut socket,
                    startup.clone(),
                    connection.clone(),
                    connection.clone(),
                    connection.clone(),
                    cancel_handler.clone(),
                )
                .await;
                if let Err(mut error) = result {
                    let is_fatal = connection.record_error(&mut error);
                    process_error(&mut socket, error, is_extended).await?;
                    if is_fatal {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// What ended a connection's wait for its next message.
enum Woken {
    Shutdown,
    StartupTimeout,
    IdleTimeout,
    Message(Option<Result<PgWireFrontendMessage, PgWireError>>),
}

/// `too_many_connections`.
const TOO_MANY_CONNECTIONS: &str = "53300";

async fn send_fatal<S>(
    socket: &mut Framed<LimitedIo<TcpStream>, PgWireMessageServerCodec<S>>,
    error: PgWireError,
) {
    let info = ErrorInfo::from(error);
    // The connection is closing either way; a client that is already gone
    // cannot be told.
    let _ = socket
        .send(PgWireBackendMessage::ErrorResponse(info.into()))
        .await;
}
