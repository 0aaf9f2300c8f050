//! A round-robin TCP load balancer: one public address in front of several ingress replicas, as
//! Twilio and API clients see a deployment (webhooks, callbacks and sends spread over replicas).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};

/// Listens on `listener` and hands each connection to the next backend in turn (the one after
/// it when it refuses).
pub fn spawn(listener: std::net::TcpListener, backends: Vec<SocketAddr>) {
    serve(listener, backends, false)
}

/// [`spawn`], and only to backends in rotation, as a load balancer's health check keeps them:
/// `GET /health/ready` answering 200, checked every 100 ms. When no backend is in rotation every
/// one is tried; a backend that refuses the connection (a replica being replaced) is skipped.
pub fn spawn_health_checked(listener: std::net::TcpListener, backends: Vec<SocketAddr>) {
    serve(listener, backends, true)
}

fn serve(listener: std::net::TcpListener, backends: Vec<SocketAddr>, checked: bool) {
    listener.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let backends: Arc<[SocketAddr]> = backends.into();
    let ready: Arc<[AtomicBool]> = backends.iter().map(|_| AtomicBool::new(true)).collect();
    if checked {
        tokio::spawn(check_health(backends.clone(), ready.clone()));
    }
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let first = next.fetch_add(1, Ordering::Relaxed);
            let (backends, ready) = (backends.clone(), ready.clone());
            tokio::spawn(async move {
                let n = backends.len();
                let order = (0..n).map(|i| (first + i) % n);
                let in_rotation: Vec<usize> = order
                    .clone()
                    .filter(|&b| ready[b].load(Ordering::Relaxed))
                    .collect();
                let candidates = if in_rotation.is_empty() {
                    order.collect()
                } else {
                    in_rotation
                };
                for b in candidates {
                    if let Ok(mut server) = TcpStream::connect(backends[b]).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
}

/// One checker per backend, so a slow answer from one never delays noticing another leave.
async fn check_health(backends: Arc<[SocketAddr]>, ready: Arc<[AtomicBool]>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    for (b, addr) in backends.iter().copied().enumerate() {
        let (http, ready) = (http.clone(), ready.clone());
        tokio::spawn(async move {
            loop {
                let ok = http
                    .get(format!("http://{addr}/health/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                ready[b].store(ok, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}
