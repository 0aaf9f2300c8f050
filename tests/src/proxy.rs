//! A TCP proxy in front of PostgreSQL that can lose a connection exactly during COMMIT: it passes
//! the client's COMMIT to the server, then closes both sides before the answer comes back. The
//! server commits; the client cannot know. (A real failure: a pooler or network dropping the
//! connection at that moment.)

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The simple-protocol Query message sqlx sends to commit: 'Q', length 11, "COMMIT\0".
const COMMIT: &[u8] = b"Q\x00\x00\x00\x0bCOMMIT\x00";

pub struct CommitCutter {
    addr: SocketAddr,
    armed: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
}

impl CommitCutter {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(AtomicUsize::new(0));
        let (a, c) = (armed.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, a.clone(), c.clone()));
            }
        });
        Self { addr, armed, cut }
    }

    /// `url` (a database URL on the upstream server) through this proxy.
    pub fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.to_string()
    }

    /// The next `n` COMMITs (on any connection) reach the server and lose their answer.
    pub fn cut_next_commits(&self, n: usize) {
        self.armed.store(n, Ordering::SeqCst);
    }

    /// COMMITs cut so far.
    pub fn cuts(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
) {
    let (mut client_r, mut client_w) = client.into_split();
    let (mut server_r, mut server_w) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
        client_w
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client_r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let cut_this = chunk.windows(COMMIT.len()).any(|w| w == COMMIT)
            && armed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| a.checked_sub(1))
                .is_ok();
        if cut_this {
            cut.fetch_add(1, Ordering::SeqCst);
            // Nothing more goes back to the client (it waits for nothing else: sqlx sends COMMIT
            // only after every earlier answer), the COMMIT goes on to the server, which commits.
            back.abort();
        }
        if server_w.write_all(chunk).await.is_err() {
            break;
        }
        if cut_this {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
    }
    let _ = server_w.shutdown().await;
    let _ = back.await;
}
