//! Transparent listener sockets (needs CAP_NET_ADMIN, as the proxy does in production).

use myelin_proxy::socket::{bind_listener, connect_marked, is_transparent, original_destination};
use std::time::Duration;
use tokio::net::TcpStream;

#[tokio::test]
async fn transparent_listeners_report_the_original_destination() {
    for (bind, dial) in [("0.0.0.0:0", "127.0.0.5"), ("[::1]:0", "::1")] {
        let listener = bind_listener(bind.parse().unwrap(), true).unwrap();
        assert!(is_transparent(&listener).unwrap(), "{bind}");
        let port = listener.local_addr().unwrap().port();
        let target = std::net::SocketAddr::new(dial.parse().unwrap(), port);
        let client = TcpStream::connect(target).await.unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        // getsockname() on the accepted socket: the address the client dialled.
        assert_eq!(original_destination(&accepted).unwrap(), target);
    }
}

#[tokio::test]
async fn plain_listeners_are_not_transparent_and_upstreams_are_marked() {
    let listener = bind_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
    assert!(!is_transparent(&listener).unwrap());
    let addr = listener.local_addr().unwrap();
    let stream = connect_marked(addr, 0xb00, None, Duration::from_secs(5))
        .await
        .unwrap();
    let mark = socket2::SockRef::from(&stream).mark().unwrap();
    assert_eq!(mark, 0xb00);
}
