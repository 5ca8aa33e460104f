//! A TCP fault proxy on loopback that a test controls: every connection to
//! [`Proxy::addr`] is relayed to its target, and the test switches what the
//! link does at any moment, for new connections and for those already open:
//!
//! - [`Link::Pass`]: bytes go through;
//! - [`Link::Cut`]: every open connection is closed (both ends), and new ones
//!   are closed as soon as they are accepted — the peer sees a reset or EOF;
//! - [`Link::Hold`]: nothing goes through and nothing is closed — bytes wait
//!   (as a partition whose packets are retransmitted until it heals), and are
//!   delivered in order when the link passes again;
//! - [`Link::Deaf`]: what the client sends arrives, nothing comes back (a
//!   one-way partition: a request lands, its answer is lost until the heal);
//! - [`Link::Slow`]: every chunk is delayed by the given latency.
//!
//! Threads only (one per direction of a connection, one accepting); dropping
//! the proxy closes everything it opened.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What a link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Pass,
    Cut,
    Hold,
    Deaf,
    Slow(Duration),
}

struct Shared {
    target: SocketAddr,
    link: Mutex<Link>,
    changed: Condvar,
    /// Both ends of every open connection, by id.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    stop: AtomicBool,
}

/// One proxied link, closed when dropped.
pub struct Proxy {
    /// `127.0.0.1:PORT`, where clients connect.
    pub addr: String,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy on a free loopback port relaying to `target` (`host:port`).
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port for the proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            target: target.parse().unwrap_or_else(|err| panic!("proxy target {target}: {err}")),
            link: Mutex::new(Link::Pass),
            changed: Condvar::new(),
            open: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || accept(listener, accepting));
        Proxy { addr, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn link(&self) -> Link {
        *self.shared.link.lock().unwrap()
    }

    /// Switches the link; [`Link::Cut`] closes every open connection at once.
    pub fn set(&self, link: Link) {
        *self.shared.link.lock().unwrap() = link;
        self.shared.changed.notify_all();
        if link == Link::Cut {
            close_all(&self.shared);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        close_all(&self.shared);
        // Wake the accepting thread, which then sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr.parse().unwrap(), Duration::from_millis(200));
    }
}

fn close_all(shared: &Shared) {
    for (_, (a, b)) in shared.open.lock().unwrap().drain() {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    static IDS: AtomicU64 = AtomicU64::new(0);
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if *shared.link.lock().unwrap() == Link::Cut {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.target, Duration::from_secs(2)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else { continue };
        let (Ok(client3), Ok(server3)) = (client.try_clone(), server.try_clone()) else { continue };
        shared.open.lock().unwrap().insert(id, (client3, server3));
        let (one, two) = (Arc::clone(&shared), Arc::clone(&shared));
        std::thread::spawn(move || relay(client, server, one, id, false));
        std::thread::spawn(move || relay(server2, client2, two, id, true));
    }
}

/// Copies `from` to `to` as the link allows, until either end closes;
/// `answers`: this is the direction from the target back to the client.
fn relay(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>, id: u64, answers: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Wait while held; give up when cut or stopped.
        let link = {
            let mut link = shared.link.lock().unwrap();
            while (*link == Link::Hold || (answers && *link == Link::Deaf)) && !shared.stop.load(Ordering::SeqCst) {
                link = shared.changed.wait(link).unwrap();
            }
            *link
        };
        if link == Link::Cut || shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if let Link::Slow(latency) = link {
            std::thread::sleep(latency);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    shared.open.lock().unwrap().remove(&id);
}
