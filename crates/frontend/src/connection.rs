//! One client connection: its planner session, startup and authentication,
//! and the error accounting shared by all its handlers.
//!
//! pgwire's message loop takes one handler per protocol area; all of them
//! are this connection's [`Connection`] (queries in `query`, COPY in
//! `copy`), except startup, which is [`Startup`].

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::TcpStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthSource,
    LoginInfo, Password, ServerParameterProvider, StartupHandler,
};
use pgwire::api::{
    ClientInfo, ConnectionGuard, ConnectionHandle, PidSecretKeyGenerator, METADATA_USER,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use sluice_planner::{Error, Session};

use crate::copy::CopyInState;
use crate::error::{fatal, internal, normalize, sqlstate_class};
use crate::interrupt::Interrupt;
use crate::query::Parser;
use crate::server::{ScramSecret, Shared};

pub(crate) struct Connection {
    pub(crate) shared: Arc<Shared>,
    pub(crate) session: Arc<SessionSlot>,
    pub(crate) parser: Arc<Parser>,
    /// The COPY FROM STDIN in progress, between CopyData messages.
    pub(crate) copy_in: Mutex<Option<CopyInState>>,
    /// A second handle on the socket, for noticing a hung-up client.
    probe: Option<Arc<TcpStream>>,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>, probe: Option<TcpStream>) -> Self {
        let session = Arc::new(SessionSlot {
            db: shared.db.clone(),
            session: OnceLock::new(),
        });
        let parser = Arc::new(Parser::new(session.clone()));
        Self {
            shared,
            session,
            parser,
            copy_in: Mutex::new(None),
            probe: probe.map(Arc::new),
        }
    }

    /// Arms the interrupt for a statement starting now.
    pub(crate) async fn interrupt<C: ClientInfo>(
        &self,
        client: &C,
        timeout: Option<Duration>,
    ) -> Interrupt {
        Interrupt::arm(client, timeout, &self.shared.shutdown, self.probe.clone()).await
    }

    /// Counts an error about to be sent to the client and returns whether it
    /// ends the connection.
    pub(crate) fn record_error(&self, error: &mut PgWireError) -> bool {
        let client_gone = matches!(error, PgWireError::IoError(_));
        let (code, is_fatal) = normalize(error);
        if !client_gone {
            self.shared.metrics.error(sqlstate_class(&code));
        }
        is_fatal
    }

    pub(crate) fn take_copy_in(&self) -> Option<CopyInState> {
        self.copy_in
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    pub(crate) fn put_copy_in(&self, state: CopyInState) {
        *self
            .copy_in
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(state);
    }
}

/// The planner session, opened once the startup parameters are known.
pub(crate) struct SessionSlot {
    db: Arc<sluice_planner::Database>,
    session: OnceLock<tokio::sync::Mutex<Session>>,
}

impl SessionSlot {
    /// Opens the session and returns the parameters to report at startup.
    fn open(&self, startup: &HashMap<String, String>) -> Vec<(String, String)> {
        let params: Vec<(String, String)> = startup
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let session = self.db.new_session(&params);
        let reported = session.reported_parameters();
        if self.session.set(tokio::sync::Mutex::new(session)).is_err() {
            tracing::warn!("startup completed twice on one connection; keeping the first session");
        }
        reported
    }

    /// The session; statements only arrive after startup opened it.
    /// The session's idle-in-transaction limit, read between messages
    /// (when no statement holds the session).
    pub(crate) fn idle_in_transaction_timeout(&self) -> Option<Duration> {
        self.session
            .get()?
            .try_lock()
            .ok()?
            .idle_in_transaction_timeout()
    }

    pub(crate) async fn lock(&self) -> PgWireResult<tokio::sync::MutexGuard<'_, Session>> {
        match self.session.get() {
            Some(session) => Ok(session.lock().await),
            None => Err(internal("no session: startup has not completed")),
        }
    }
}

/// Reports the session's parameters (server_version, TimeZone, …) at startup,
/// opening the session from the client's startup parameters on the way.
struct SessionParameters(Arc<SessionSlot>);

impl ServerParameterProvider for SessionParameters {
    fn server_parameters<C: ClientInfo>(&self, client: &C) -> Option<HashMap<String, String>> {
        Some(self.0.open(client.metadata()).into_iter().collect())
    }
}

/// Startup and authentication: trust, or SCRAM-SHA-256 through pgwire.
pub(crate) struct Startup {
    connection: Arc<Connection>,
    parameters: SessionParameters,
    sasl: Option<SASLAuthStartupHandler<SessionParameters>>,
}

impl Startup {
    pub(crate) fn new(connection: Arc<Connection>) -> Self {
        let shared = &connection.shared;
        let sasl = shared.scram.as_ref().map(|secret| {
            let source = Arc::new(SingleUser {
                user: secret.user.clone(),
                secret: secret_copy(secret),
            });
            let pids: Arc<dyn PidSecretKeyGenerator> = shared.pids.clone();
            SASLAuthStartupHandler::new(Arc::new(SessionParameters(connection.session.clone())))
                .with_scram(ScramAuth::new(source))
                .with_pid_secret_key_generator(pids)
                .with_connection_manager(shared.cancels.clone())
        });
        let parameters = SessionParameters(connection.session.clone());
        Self {
            connection,
            parameters,
            sasl,
        }
    }
}

fn secret_copy(secret: &ScramSecret) -> Password {
    Password::new(Some(secret.salt.clone()), secret.salted_password.clone())
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(sasl) = &self.sasl {
            return match sasl.on_startup(client, message).await {
                // pgwire names the SCRAM username, which libpq leaves empty.
                Err(PgWireError::InvalidPassword(_)) => {
                    let user = client
                        .metadata()
                        .get(METADATA_USER)
                        .cloned()
                        .unwrap_or_default();
                    Err(fatal(Error::new(
                        INVALID_PASSWORD,
                        format!("password authentication failed for user \"{user}\""),
                    )))
                }
                other => other,
            };
        }
        let PgWireFrontendMessage::Startup(startup) = message else {
            return Ok(());
        };
        protocol_negotiation(client, &startup).await?;
        save_startup_parameters_to_metadata(client, &startup);
        let shared = &self.connection.shared;
        let (pid, secret_key) = shared.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret_key.clone());
        // The handle lets a CancelRequest reach this connection's running
        // statement; the guard unregisters it when the connection ends.
        let (handle, guard) = shared.cancels.register(pid, secret_key);
        client
            .session_extensions()
            .insert::<Arc<ConnectionHandle>>(handle);
        client.session_extensions().insert::<ConnectionGuard>(guard);
        finish_authentication(client, &self.parameters).await
    }
}

/// `invalid_password`.
const INVALID_PASSWORD: &str = "28P01";

/// The one configured user; any other name fails the SCRAM exchange the
/// same way a wrong password does, so names cannot be probed.
struct SingleUser {
    user: String,
    secret: Password,
}

/// pgwire wants `Debug`; the salted password stays out of logs.
impl Debug for SingleUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleUser")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl AuthSource for SingleUser {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        if login.user() == Some(self.user.as_str()) {
            return Ok(self.secret.clone());
        }
        // Same salt, a salted password no client can match.
        let salt = self.secret.salt().map(<[u8]>::to_vec);
        let impossible = pgwire::api::auth::sasl::scram::random_nonce().into_bytes();
        Ok(Password::new(salt, impossible))
    }
}
