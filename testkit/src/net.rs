//! Loopback ports, and a TCP relay whose connections a test can cut at once, as a broken
//! link would (the bench's link emulator, with latency and bandwidth, is `bench/src/link.rs`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port free on loopback now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Wait (up to `limit`) until something accepts connections on loopback `port`.
pub fn wait_for_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            t.elapsed() < limit,
            "nothing listens on 127.0.0.1:{port} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A TCP relay to `target`; [`Relay::cut`] drops every connection through it at once.
pub struct Relay {
    pub port: u16,
    live: Arc<Mutex<Vec<TcpStream>>>,
    /// How many times [`Relay::cut`] ran.
    pub cuts: usize,
}

impl Relay {
    pub fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let reg = live.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                let Ok(outbound) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (Ok(a), Ok(b), Ok(c), Ok(d)) = (
                    inbound.try_clone(),
                    outbound.try_clone(),
                    inbound.try_clone(),
                    outbound.try_clone(),
                ) else {
                    continue;
                };
                reg.lock().unwrap_or_else(|p| p.into_inner()).extend([a, b]);
                pipe(c, d);
                pipe(outbound, inbound);
            }
        });
        Ok(Self {
            port,
            live,
            cuts: 0,
        })
    }

    /// Reset every connection through the relay (new ones are still accepted).
    pub fn cut(&mut self) {
        for s in self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.cuts += 1;
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_carries_bytes_until_cut() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut b = [0u8; 64];
                    while let Ok(n @ 1..) = s.read(&mut b) {
                        let _ = s.write_all(&b[..n]);
                    }
                });
            }
        });
        let mut relay = Relay::start(target).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", relay.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        relay.cut();
        assert_eq!(relay.cuts, 1);
        // After the cut the connection reads end of stream (or a reset), never data.
        let mut rest = [0u8; 4];
        assert!(matches!(c.read(&mut rest), Ok(0) | Err(_)));
        wait_for_port(relay.port, Duration::from_secs(1)).unwrap();
    }
}
