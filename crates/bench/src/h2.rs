//! HTTP/2 over cleartext TCP (h2c with prior knowledge), through hyper's
//! HTTP/2 client connection.
//!
//! One [`Shared`] connection carries the requests of several lanes (one
//! stream each). Whichever lane first finds it down reconnects it; the others
//! wait for that attempt instead of opening connections of their own, so a
//! run keeps exactly `connections` connections, as `h2load -c` does.
//! Everything here lives on one thread's `LocalSet` (`Rc`, `RefCell`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

use crate::h1::{ConnectError, connect};

/// A request sender of one HTTP/2 connection.
pub(crate) type Sender = SendRequest<Full<Bytes>>;

#[derive(Debug)]
enum State {
    Down,
    Connecting,
    /// A live connection and its generation, so that the end of an old
    /// connection's driver cannot mark a newer connection down.
    Up(Sender, u64),
}

/// One HTTP/2 connection shared by the lanes of its streams.
#[derive(Debug)]
pub(crate) struct Shared {
    addr: SocketAddr,
    limit: Duration,
    state: RefCell<State>,
    generation: std::cell::Cell<u64>,
    changed: Notify,
}

/// What [`Shared::sender`] found.
pub(crate) enum Got {
    /// A sender on a live connection.
    Sender(Sender),
    /// This lane's connection attempt failed.
    Failed(String),
}

impl Shared {
    pub(crate) fn new(addr: SocketAddr, limit: Duration) -> Rc<Self> {
        Rc::new(Self {
            addr,
            limit,
            state: RefCell::new(State::Down),
            generation: std::cell::Cell::new(0),
            changed: Notify::new(),
        })
    }

    /// A sender on the live connection: the current one, or one this lane
    /// opens, or the one another lane is opening.
    pub(crate) async fn sender(self: &Rc<Self>) -> Got {
        loop {
            let notified = self.changed.notified();
            let connect = {
                let mut state = self.state.borrow_mut();
                match &*state {
                    State::Up(sender, _) if !sender.is_closed() => {
                        return Got::Sender(sender.clone());
                    }
                    State::Connecting => false,
                    _ => {
                        *state = State::Connecting;
                        true
                    }
                }
            };
            if !connect {
                notified.await;
                continue;
            }
            let result = open(self.addr, self.limit).await;
            let got = match result {
                Ok((sender, driver)) => {
                    let generation = self.generation.get() + 1;
                    self.generation.set(generation);
                    *self.state.borrow_mut() = State::Up(sender.clone(), generation);
                    let me = self.clone();
                    tokio::task::spawn_local(async move {
                        if let Err(e) = driver.await {
                            tracing::debug!(error = %e, "HTTP/2 connection failed");
                        }
                        me.down(generation);
                    });
                    Got::Sender(sender)
                }
                Err(reason) => {
                    *self.state.borrow_mut() = State::Down;
                    Got::Failed(reason)
                }
            };
            self.changed.notify_waiters();
            return got;
        }
    }

    /// Marks connection `generation` down (its driver ended), so that the
    /// next lane reconnects; lanes also see a closed sender by themselves.
    fn down(&self, generation: u64) {
        let mut state = self.state.borrow_mut();
        if matches!(&*state, State::Up(_, g) if *g == generation) {
            *state = State::Down;
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

type Driver = http2::Connection<TokioIo<tokio::net::TcpStream>, Full<Bytes>, TokioExecutor>;

/// Connects and performs the HTTP/2 handshake.
pub(crate) async fn open(addr: SocketAddr, limit: Duration) -> Result<(Sender, Driver), String> {
    let stream = connect(addr, limit)
        .await
        .map_err(|e: ConnectError| e.describe(limit))?;
    let handshake = http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(stream));
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(format!(
            "HTTP/2 handshake failed: {}",
            crate::engine::error_chain(&e)
        )),
        Err(_) => Err(format!("HTTP/2 handshake timed out after {limit:?}")),
    }
}

/// Sends `request` and reads the whole response: status and body length.
pub(crate) async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> Result<(u16, u64), hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            bytes += data.len() as u64;
        }
    }
    Ok((status, bytes))
}
