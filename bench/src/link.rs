//! A user-space link emulator: a TCP relay with one-way delay and a bandwidth cap.
//!
//! This kernel has no netem, so WAN conditions are made here. Each direction of the link is
//! one [`Pipe`] shared by every connection through the relay (so two transfers share the
//! bandwidth, as on a real link). A chunk read from one side is given a departure time on
//! the pipe's transmitter (serialisation at the capped rate, after whatever is queued) and
//! is delivered RTT/2 later. The queue between reading and delivery is bounded; when it is
//! full the relay stops reading, so senders see TCP back-pressure, not unbounded buffering.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Link parameters.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LinkSpec {
    pub rtt: Duration,
    /// Bytes per second in each direction; `None` = unlimited.
    pub bytes_per_sec: Option<f64>,
}

/// Relay reads in chunks of this size: small enough for smooth pacing.
const CHUNK: usize = 16 * 1024;

/// One direction of the link.
struct Pipe {
    spec: LinkSpec,
    /// When the transmitter is next free (std Mutex: held for arithmetic only).
    next_free: Mutex<Instant>,
    bytes: AtomicU64,
}

impl Pipe {
    /// Departure-plus-delay time for `n` bytes sent now.
    fn schedule(&self, n: usize) -> Instant {
        let now = Instant::now();
        let sent = match self.spec.bytes_per_sec {
            Some(bw) => {
                let mut free = self.next_free.lock().expect("pipe lock");
                let start = (*free).max(now);
                let end = start + Duration::from_secs_f64(n as f64 / bw);
                *free = end;
                end
            }
            None => now,
        };
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        sent + self.spec.rtt / 2
    }

    /// Chunks allowed in flight: the bandwidth-delay product plus 1 MiB of queue.
    fn queue_chunks(&self) -> usize {
        let bdp = self
            .spec
            .bytes_per_sec
            .map_or(8.0 * 1024.0 * 1024.0, |bw| bw * self.spec.rtt.as_secs_f64());
        ((bdp as usize + (1 << 20)) / CHUNK).max(64)
    }
}

/// A running relay: connect to `addr` to reach `upstream` through the emulated link.
///
/// Threads, not tasks: delivery times need sub-millisecond precision (tokio's timer wheel
/// rounds to whole milliseconds, which alone adds ~2 ms to a round trip), and a relay has
/// only a handful of connections.
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<Pipe>,
    down: Arc<Pipe>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub async fn start(spec: LinkSpec, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let pipe = || {
            Arc::new(Pipe {
                spec,
                next_free: Mutex::new(Instant::now()),
                bytes: AtomicU64::new(0),
            })
        };
        let (up, down) = (pipe(), pipe());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (u, d, st) = (up.clone(), down.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                shuttle(client, s2, u.clone());
                shuttle(server, c2, d.clone());
            }
        });
        Ok(Self {
            addr,
            up,
            down,
            stop,
        })
    }

    /// Bytes that crossed the link (client->server, server->client).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.up.bytes.load(Ordering::Relaxed),
            self.down.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(self.addr); // wake the accept loop
    }
}

/// Move bytes from `r` to `w` through `pipe` until `r` ends: a reader thread stamps each
/// chunk with its delivery time, a writer thread sleeps until then and writes it.
fn shuttle(mut r: std::net::TcpStream, mut w: std::net::TcpStream, pipe: Arc<Pipe>) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Instant, Bytes)>(pipe.queue_chunks());
    std::thread::spawn(move || {
        while let Ok((at, chunk)) = rx.recv() {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let at = pipe.schedule(n);
            if tx.send((at, Bytes::copy_from_slice(&buf[..n]))).is_err() {
                break;
            }
        }
    });
}

/// What [`verify`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    pub rtt_ms_median: f64,
    pub rtt_ms_set: f64,
    pub throughput_mb_s: Option<f64>,
    pub throughput_cap_mb_s: Option<f64>,
    pub ok: bool,
}

/// Check the emulator before trusting it: the added round trip within 2 ms of the setting,
/// throughput within 5% of the cap.
pub async fn verify(spec: LinkSpec) -> std::io::Result<Verification> {
    // An echo server for the round trip, a sink for throughput.
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if buf[0] == b'P' {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            } else if buf[..n].contains(&b'E') {
                                let _ = s.write_all(b"D").await;
                            }
                        }
                    }
                }
            });
        }
    });
    let relay = Relay::start(spec, echo_addr).await?;
    let mut s = TcpStream::connect(relay.addr).await?;
    s.set_nodelay(true)?;
    let mut rtts = Vec::new();
    let mut one = [0u8; 1];
    for _ in 0..15 {
        let t = Instant::now();
        s.write_all(b"P").await?;
        s.read_exact(&mut one).await?;
        rtts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rtts.sort_by(f64::total_cmp);
    let median = rtts[rtts.len() / 2];
    let set = spec.rtt.as_secs_f64() * 1000.0;
    let rtt_ok = (median - set).abs() <= 2.0;

    let (tput, cap) = match spec.bytes_per_sec {
        Some(bw) => {
            // Send ~3 s worth of data (filler bytes, never 'P' or 'E'), then an end mark;
            // time until the sink's acknowledgement, less one round trip.
            let total = (bw * 3.0) as usize;
            let mut s = TcpStream::connect(relay.addr).await?;
            let filler = vec![b'x'; 1 << 16];
            let t = Instant::now();
            let mut sent = 0;
            while sent < total {
                let n = (total - sent).min(filler.len());
                s.write_all(&filler[..n]).await?;
                sent += n;
            }
            s.write_all(b"E").await?;
            s.read_exact(&mut one).await?;
            let secs = t.elapsed().as_secs_f64() - spec.rtt.as_secs_f64();
            (Some(total as f64 / secs / 1e6), Some(bw / 1e6))
        }
        None => (None, None),
    };
    let tput_ok = match (tput, cap) {
        (Some(t), Some(c)) => (t - c).abs() / c <= 0.05,
        _ => true,
    };
    Ok(Verification {
        rtt_ms_median: median,
        rtt_ms_set: set,
        throughput_mb_s: tput,
        throughput_cap_mb_s: cap,
        ok: rtt_ok && tput_ok,
    })
}
