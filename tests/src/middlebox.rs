//! A TCP middlebox between the gateway and a real upstream, for the
//! upstream fault tests: it relays bytes both ways and injects one fault,
//! the one set when a connection is accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the middlebox does to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Relays both ways.
    Pass,
    /// Relays the request, then this many bytes of the answer, then resets
    /// the gateway's connection (RST, not FIN).
    ResetAfter(usize),
    /// Relays, holding the answer's first byte back this long.
    SlowFirstByte(Duration),
    /// Accepts and reads, never answers and never closes.
    HalfOpen,
    /// Relays one exchange; when the next request comes on the same
    /// connection, closes it without relaying it: an upstream closing a
    /// kept-alive connection just as a request is sent.
    CloseOnNextRequest,
}

/// A running middlebox. Stops when dropped.
pub struct Middlebox {
    /// Where the gateway connects.
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    accepted: Arc<AtomicUsize>,
    /// Connections open to or from the middlebox's gateway side.
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Middlebox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Middlebox {
    /// Starts one in front of `upstream`, with `fault` for the connections
    /// it accepts from now on.
    pub async fn start(upstream: SocketAddr, fault: Fault) -> Middlebox {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(fault));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let task = {
            let (fault, accepted, open) = (fault.clone(), accepted.clone(), open.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        continue;
                    };
                    accepted.fetch_add(1, SeqCst);
                    let f = *fault.lock().unwrap();
                    let open = open.clone();
                    open.fetch_add(1, SeqCst);
                    tokio::spawn(async move {
                        relay(conn, upstream, f).await;
                        open.fetch_sub(1, SeqCst);
                    });
                }
            })
        };
        Middlebox {
            addr,
            fault,
            accepted,
            open,
            task,
        }
    }

    /// The fault for connections accepted from now on.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }

    /// Connections from the gateway still open.
    pub fn open(&self) -> usize {
        self.open.load(SeqCst)
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, fault: Fault) {
    if fault == Fault::HalfOpen {
        let mut buf = [0u8; 4096];
        // Read what comes (so the sender is never blocked), answer nothing,
        // and hold the connection until the gateway gives up on it.
        while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
        return;
    }
    if let Fault::ResetAfter(_) = fault {
        // Dropping a socket with a zero linger sends RST. (Deprecated because
        // a non-zero linger blocks the thread on drop; a zero one does not.)
        #[allow(deprecated)]
        let _ = client.set_linger(Some(Duration::ZERO));
    }
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    // Borrowed halves: dropping them does not shut the socket down (an owned
    // write half sends FIN when dropped, which would hide the RST).
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = up.split();
    let answered = Arc::new(AtomicBool::new(false));
    let requests = {
        let answered = answered.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if fault == Fault::CloseOnNextRequest && answered.load(SeqCst) {
                    // Not relayed: the connection ends here.
                    break;
                }
                if uw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    };
    let answers = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut sent = 0usize;
        let mut first = true;
        loop {
            let n = match ur.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if first {
                first = false;
                if let Fault::SlowFirstByte(d) = fault {
                    tokio::time::sleep(d).await;
                }
            }
            let n = match fault {
                Fault::ResetAfter(limit) => n.min(limit - sent),
                _ => n,
            };
            if n > 0 && cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            sent += n;
            answered.store(true, SeqCst);
            if matches!(fault, Fault::ResetAfter(limit) if sent >= limit) {
                break;
            }
        }
    };
    // Whichever direction ends first ends the connection (with RST for
    // `ResetAfter`, whose socket has a zero linger).
    tokio::select! {
        _ = requests => {}
        _ = answers => {}
    }
    drop(client);
}
