//! A round-robin TCP load balancer: one public address in front of several ingress replicas, as
//! Twilio and API clients see a deployment (webhooks, callbacks and sends spread over replicas).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::net::{TcpListener, TcpStream};

/// Listens on `listener` and hands each connection to the next backend in turn (the one after
/// it when it refuses).
pub fn spawn(listener: std::net::TcpListener, backends: Vec<SocketAddr>) {
    listener.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let backends: Arc<[SocketAddr]> = backends.into();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let first = next.fetch_add(1, Ordering::Relaxed);
            let backends = backends.clone();
            tokio::spawn(async move {
                // A backend that refuses the connection (a replica being replaced) is skipped,
                // as a load balancer's health check or `proxy_next_upstream` would.
                for i in 0..backends.len() {
                    let backend = backends[(first + i) % backends.len()];
                    if let Ok(mut server) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
}
