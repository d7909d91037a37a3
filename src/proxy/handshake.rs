//! Where TLS handshakes run: on the workers, one handshake step per turn.
//!
//! A full mTLS handshake costs the server a key exchange, a signature and the
//! verification of the client's chain: a few hundred microseconds of CPU. Polled like
//! any other task, a burst of new connections (a peer restarting, a scale-up) puts
//! that whole bill in the run queue ahead of the requests of established
//! connections, and their latency grows with the size of the burst.
//!
//! Here every poll of a handshake future is a *step* that first takes a turn: a
//! permit of a semaphore with one permit per worker, then a yield to the back of the
//! run queue. Only as many handshake steps as there are workers can be queued at a
//! time, and each one waits behind whatever was ready before it. A request on an
//! established connection therefore waits for at most one handshake step per worker,
//! however many connections arrive at once; the handshakes share what is left.
//!
//! The crypto of a step happens inside its poll (rustls processes what it read), so
//! a step holds its permit for exactly the poll. Unlike a separate handshake thread,
//! no wake-up crosses threads: the socket, its readiness and the handshake stay on
//! the worker. `PORTCULLIS_HANDSHAKE_TURNS=off` in the environment polls handshakes
//! without turns (for side-by-side measurements).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::coalesce::Coalesce;

/// The environment variable that disables turns when set to `off`.
pub const ENV_SWITCH: &str = "PORTCULLIS_HANDSHAKE_TURNS";

/// The turns: one permit per worker of the runtime that first needed one, or `None`
/// when `PORTCULLIS_HANDSHAKE_TURNS=off`.
fn turns() -> Option<&'static Arc<Semaphore>> {
    static TURNS: OnceLock<Option<Arc<Semaphore>>> = OnceLock::new();
    TURNS
        .get_or_init(|| {
            if std::env::var_os(ENV_SWITCH).is_some_and(|v| v == "off") {
                tracing::info!("{ENV_SWITCH}=off: TLS handshakes are polled without turns");
                return None;
            }
            let workers = Handle::try_current()
                .map(|h| h.metrics().num_workers())
                .unwrap_or(1)
                .max(1);
            Some(Arc::new(Semaphore::new(workers)))
        })
        .as_ref()
}

/// The server side of a TLS handshake on `stream`, one step per turn.
///
/// The stream comes boxed: an inbound connection's task keeps it across several
/// stages (checks, protocol sniffing, HTTP, relaying), each of which would otherwise
/// hold the 1.2 kB stream inline, and the task is sized for all of them for the
/// connection's life (7.5 kB before, 3.4 kB boxed). The outbound side's connection
/// task (3.0 kB) did not change when its client streams were boxed the same way.
///
/// Its session tickets (TLS 1.3) wait to go out with the first bytes the connection
/// writes ([`Coalesce`]).
pub async fn accept<IO>(
    acceptor: TlsAcceptor,
    stream: IO,
) -> io::Result<Box<TlsStream<Coalesce<IO>>>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // Boxed in a block of its own: a stream still in scope at the await below would
    // be kept inline in the connection's task.
    let mut tls = {
        match in_turns(acceptor.accept(Coalesce::new(stream)).into_fallible()).await {
            Ok(tls) => Box::new(tls),
            Err((e, mut io)) => {
                // An alert may still be held.
                io.send_held_now();
                return Err(e);
            }
        }
    };
    let tls13 = tls.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    tls.get_mut().0.handshake_done(tls13).await?;
    Ok(tls)
}

/// A server-side TLS stream as [`accept`] returns it.
pub type ServerTls = TlsStream<Coalesce<TcpStream>>;

/// Polls `fut` one step per turn (or directly when turns are off).
pub async fn in_turns<F: Future>(fut: F) -> F::Output {
    match turns() {
        Some(sem) => Turns::new(sem.clone(), fut).await,
        None => fut.await,
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Where a [`Turns`] is between two polls of its inner future.
enum Step {
    /// The inner future is waiting for its own wake-up (or has not started).
    Waiting,
    /// Waiting for a permit.
    Acquiring(Boxed<Result<OwnedSemaphorePermit, AcquireError>>),
    /// Holding a permit, queued behind the tasks that were ready before.
    Yielding(Option<OwnedSemaphorePermit>, Boxed<()>),
}

/// A future polled only while it holds a turn.
struct Turns<F> {
    sem: Arc<Semaphore>,
    inner: Pin<Box<F>>,
    step: Step,
}

impl<F: Future> Turns<F> {
    fn new(sem: Arc<Semaphore>, inner: F) -> Self {
        Turns {
            sem,
            inner: Box::pin(inner),
            step: Step::Waiting,
        }
    }
}

impl<F: Future> Future for Turns<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Every field is `Unpin` (the inner future is boxed).
        let this = self.get_mut();
        loop {
            match &mut this.step {
                // Polled again: the inner future's waker fired (or a spurious wake,
                // which costs one extra poll of the inner future).
                Step::Waiting => {
                    this.step = Step::Acquiring(Box::pin(this.sem.clone().acquire_owned()));
                }
                Step::Acquiring(acquire) => match acquire.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    // The semaphore is never closed; without a permit the step runs.
                    Poll::Ready(permit) => {
                        this.step = Step::Yielding(permit.ok(), Box::pin(tokio::task::yield_now()));
                    }
                },
                Step::Yielding(permit, yielded) => {
                    if yielded.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let out = this.inner.as_mut().poll(cx);
                    drop(permit.take());
                    this.step = Step::Waiting;
                    return out;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
