use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A loopback connection: the peer's end, and ours wrapped.
async fn connected() -> (TcpStream, Coalesce<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = TcpStream::connect(addr).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    (peer, Coalesce::new(tcp))
}

#[tokio::test]
async fn held_bytes_go_before_a_wait_for_the_peer_and_with_the_next_write() {
    let (mut peer, mut io) = connected().await;

    // Handshake: held through a flush, sent when a read would wait.
    io.write_all(b"flight").await.unwrap();
    io.flush().await.unwrap();
    assert_eq!(io.held(), 6);
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await;
    assert!(read.is_err(), "nothing to read yet");
    assert_eq!(io.held(), 0);
    let mut got = [0u8; 6];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"flight");

    // After the handshake: held through a read that waits, sent with the next write.
    io.write_all(b"ticket").await.unwrap();
    io.handshake_done(true).await.unwrap();
    assert_eq!(io.stage(), Stage::Deferred);
    let read = tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await;
    assert!(read.is_err(), "nothing to read yet");
    assert_eq!(io.held(), 6);
    io.flush().await.unwrap();
    assert_eq!(
        io.held(),
        6,
        "a flush after the handshake leaves the tickets"
    );
    io.write_all(b"reply").await.unwrap();
    assert_eq!(io.stage(), Stage::Through);
    let mut got = [0u8; 11];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ticketreply");
    assert_eq!(
        io.get_ref().peer_addr().unwrap(),
        peer.local_addr().unwrap()
    );
}

#[tokio::test]
async fn held_bytes_go_on_shutdown() {
    let (mut peer, mut io) = connected().await;
    io.write_all(b"ticket").await.unwrap();
    io.handshake_done(true).await.unwrap();
    io.shutdown().await.unwrap();
    let mut got = Vec::new();
    peer.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ticket");
}
