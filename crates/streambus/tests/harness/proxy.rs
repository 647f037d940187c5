//! A TCP proxy that can cut a link: while cut, connections it had are
//! closed and new ones are accepted but get nothing through (a black hole,
//! as behind a partitioned network), until it is healed.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One proxied link.
#[derive(Clone)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    upstream: Arc<watch::Sender<SocketAddr>>,
}

impl Proxy {
    /// A proxy on an ephemeral 127.0.0.1 port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = Proxy {
            addr: listener.local_addr().unwrap(),
            cut: Arc::new(watch::channel(false).0),
            upstream: Arc::new(watch::channel(upstream).0),
        };
        let this = p.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(this.clone().serve(client));
            }
        });
        p
    }

    /// Cuts (true) or heals (false) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    async fn serve(self, mut client: TcpStream) {
        let mut cut = self.cut.subscribe();
        // A connection made while cut hangs until the link heals, then is
        // closed: nothing crosses a partition.
        if *cut.borrow_and_update() {
            let _ = cut.wait_for(|c| !*c).await;
            let _ = client.shutdown().await;
            return;
        }
        let upstream = *self.upstream.borrow();
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            _ = cut.wait_for(|c| *c) => {}
        }
    }
}
