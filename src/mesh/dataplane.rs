//! The mesh's data-plane threads: where client connections on published
//! TCP ports are accepted and spliced.
//!
//! Each thread runs its own single-threaded runtime and accepts on its own
//! `SO_REUSEPORT` listener of every published TCP port, so the kernel
//! spreads new connections over the threads and every wake-up of one
//! connection (accept, connect, each read and write) happens on one
//! thread: no hand-off between threads per connection. Client traffic
//! also never waits behind the control plane's tasks (Raft, heartbeats,
//! the endpoint feed) on the main runtime, nor delays them.
//!
//! What the data plane asks of the rest of the node (the engine's
//! answer about a container's address, dialing a peer) runs on the main
//! runtime ([`DataPlane::on_main`]): those clients keep their own
//! background tasks on the runtime that created them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use shoal_cli::args::MAX_MESH_THREADS;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinError};

/// The data-plane threads of one node; dropping it ends them (and every
/// connection they carry).
pub struct DataPlane {
    threads: Vec<Handle>,
    main: Handle,
    _stop: watch::Sender<()>,
}

impl DataPlane {
    /// Starts `threads` (1..=[`MAX_MESH_THREADS`]) data-plane threads; `main`
    /// is the node's own runtime.
    pub fn start(threads: usize, main: Handle) -> io::Result<DataPlane> {
        let (stop, stopped) = watch::channel(());
        let mut handles = Vec::new();
        for i in 0..threads.clamp(1, MAX_MESH_THREADS) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("shoal-mesh-{i}"))
                .spawn(move || {
                    // Runs the thread's tasks until the DataPlane is dropped.
                    runtime.block_on(async move { while stopped.changed().await.is_ok() {} });
                })?;
        }
        Ok(DataPlane {
            threads: handles,
            main,
            _stop: stop,
        })
    }

    /// How many threads carry connections.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Accepts on `addr` on every thread: one `SO_REUSEPORT` listener per
    /// thread, each served by `serve`. All listeners are bound before any
    /// is served, so a port that cannot be bound is reported whole.
    pub fn listen_tcp<F, Fut>(&self, addr: SocketAddr, serve: F) -> io::Result<Vec<AbortHandle>>
    where
        F: Fn(tokio::net::TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listeners = (0..self.threads.len())
            .map(|_| reuseport_listener(addr))
            .collect::<io::Result<Vec<_>>>()?;
        let mut tasks = Vec::new();
        for (thread, listener) in self.threads.iter().zip(listeners) {
            // Registered with the thread's own reactor.
            let listener = {
                let _entered = thread.enter();
                tokio::net::TcpListener::from_std(listener)?
            };
            tasks.push(thread.spawn(serve(listener)).abort_handle());
        }
        Ok(tasks)
    }

    /// Runs `work` on the node's main runtime and waits for it.
    pub async fn on_main<T, Fut>(&self, work: Fut) -> Result<T, JoinError>
    where
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.main.spawn(work).await
    }
}

/// A listening TCP socket others may bind too (`SO_REUSEPORT`: only
/// sockets of the same user, which the kernel balances between).
fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn every_thread_accepts_on_the_port_and_abort_closes_it() {
        let plane = DataPlane::start(3, Handle::current()).unwrap();
        assert_eq!(plane.len(), 3);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tasks = plane
            .listen_tcp(addr, |listener| async move {
                let name = std::thread::current().name().unwrap_or("").to_string();
                loop {
                    let (mut conn, _) = listener.accept().await.unwrap();
                    conn.write_all(name.as_bytes()).await.unwrap();
                }
            })
            .unwrap();
        assert_eq!(tasks.len(), 3);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut name = String::new();
            conn.read_to_string(&mut name).await.unwrap_or_default();
            assert!(name.starts_with("shoal-mesh-"), "{name:?}");
            seen.insert(name);
        }
        assert!(seen.len() > 1, "one thread took every connection: {seen:?}");
        // A second binding of the same port by this node is not refused
        // (SO_REUSEPORT), but a plain listener is.
        assert!(std::net::TcpListener::bind(addr).is_err());
        for task in &tasks {
            task.abort();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        assert_eq!(plane.on_main(async { 7 }).await.unwrap(), 7);
    }
}
