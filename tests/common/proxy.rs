//! A TCP proxy between a daemon and the broker, to cut or stall its connections (the chaos
//! suite, the groups' tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP proxy: forwards to `target`; `cut()` drops every connection, `stall(true)` stops
/// moving bytes (connections stay open) until `stall(false)`.
pub struct Proxy {
    pub port: u16,
    stalled: Arc<AtomicBool>,
    generation: Arc<AtomicU8>,
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU8::new(0));
        let (s, g) = (stalled.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    continue;
                };
                let born = g.load(Ordering::SeqCst);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                for (mut r, mut w) in [
                    (
                        Box::new(ri) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(wo) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(ro), Box::new(wi)),
                ] {
                    let (s, g) = (s.clone(), g.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            if g.load(Ordering::SeqCst) != born {
                                return;
                            }
                            if s.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                            let n = match tokio::time::timeout(
                                Duration::from_millis(100),
                                r.read(&mut buf),
                            )
                            .await
                            {
                                Err(_) => continue,
                                Ok(Ok(0)) | Ok(Err(_)) => return,
                                Ok(Ok(n)) => n,
                            };
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Proxy {
            port,
            stalled,
            generation,
        }
    }

    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }
}
