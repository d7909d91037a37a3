//! The client side's TLS session store. A sidecar opening many connections to the same
//! peer at once (a `tcp` route relays one client connection per peer connection) needs
//! more TLS 1.3 tickets per server than rustls' in-memory store keeps (8): with 16
//! connects in flight the queue runs dry and every connect after the eighth pays a
//! full handshake (a signature and a chain verification on each side). This store
//! keeps [`TICKETS_PER_SERVER`] tickets for each of up to [`SERVERS`] servers and
//! leaves the rest (key-exchange hints, TLS 1.2 sessions) to rustls' store.
//!
//! One store belongs to one client configuration, built once per identity rotation
//! and per pinned peer, so a ticket is only offered where the same SPIFFE ID is
//! required. Tickets are single-use on a portcullis server.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::NamedGroup;
use rustls_pki_types::ServerName;

/// TLS 1.3 tickets kept per server: the newest are kept, the newest offered first.
pub const TICKETS_PER_SERVER: usize = 32;
/// Servers remembered; the one added first is forgotten first.
pub const SERVERS: usize = 64;

#[derive(Default)]
struct Tickets {
    by_server: HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>,
    /// Servers in the order they were first added, for eviction.
    order: VecDeque<ServerName<'static>>,
}

/// See the module documentation.
pub struct SessionStore {
    others: ClientSessionMemoryCache,
    tickets: Mutex<Tickets>,
}

impl SessionStore {
    pub fn new() -> SessionStore {
        SessionStore {
            others: ClientSessionMemoryCache::new(SERVERS),
            tickets: Mutex::new(Tickets::default()),
        }
    }

    fn with_tickets<T>(&self, f: impl FnOnce(&mut Tickets) -> T) -> T {
        // A panic while holding the lock leaves a consistent map (every edit is one
        // call), so a poisoned lock is still usable.
        let mut guard = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

impl Default for SessionStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore").finish_non_exhaustive()
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.others.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.others.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.others.set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.others.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.others.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.with_tickets(|t| {
            let queue = match t.by_server.get_mut(&server_name) {
                Some(q) => q,
                None => {
                    if t.order.len() >= SERVERS {
                        if let Some(oldest) = t.order.pop_front() {
                            t.by_server.remove(&oldest);
                        }
                    }
                    t.order.push_back(server_name.clone());
                    t.by_server.entry(server_name).or_default()
                }
            };
            if queue.len() >= TICKETS_PER_SERVER {
                queue.pop_front();
            }
            queue.push_back(value);
        })
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.with_tickets(|t| t.by_server.get_mut(server_name)?.pop_back())
    }
}
