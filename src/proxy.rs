//! A small TCP fault proxy for tests: sits between a client and a real
//! server on loopback, and can cut every connection, refuse new ones, or
//! blackhole traffic (accept bytes, forward nothing) on demand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Faults {
    refuse: AtomicBool,
    blackhole: AtomicBool,
    cut: watch::Sender<u64>,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        assert!(
            upstream.ip().is_loopback(),
            "the fault proxy only forwards to loopback"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(0u64);
        let faults = Arc::new(Faults {
            refuse: AtomicBool::new(false),
            blackhole: AtomicBool::new(false),
            cut,
        });
        let shared = faults.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if shared.refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let faults = shared.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut cut = faults.cut.subscribe();
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, faults.clone());
                    let down = pump(sr, cw, faults.clone());
                    // Biased: once cut, the connection never forwards another
                    // byte, even when `up()` follows the cut at once (the
                    // pumps would otherwise race to flush what a blackhole
                    // held, and a "lost" message would reach the server).
                    tokio::select! {
                        biased;
                        _ = cut.changed() => {}
                        _ = async { tokio::join!(up, down) } => {}
                    }
                });
            }
        });
        Self { addr, faults, task }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Drop every open connection at once.
    pub fn cut(&self) {
        self.faults.cut.send_modify(|g| *g += 1);
    }

    /// Refuse (close at once) new connections while `on`.
    pub fn refuse(&self, on: bool) {
        self.faults.refuse.store(on, Ordering::SeqCst);
    }

    /// While `on`, forward nothing in either direction: requests hang
    /// unanswered, as behind a dead network path.
    pub fn blackhole(&self, on: bool) {
        self.faults.blackhole.store(on, Ordering::SeqCst);
    }

    /// Cut connections and refuse new ones: the server looks down.
    pub fn down(&self) {
        self.refuse(true);
        self.cut();
    }

    /// Accept and forward again.
    pub fn up(&self) {
        self.blackhole(false);
        self.refuse(false);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<Faults>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while faults.blackhole.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while faults.blackhole.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
