//! Free loopback ports for servers started by tests.
//!
//! A port is free when we can bind it; we release it right before the server
//! binds, which leaves a small window for a race with another test. Ports are
//! drawn at random from a range far from the defaults (8080, 9000...) so that
//! parallel tests and a developer's running stack rarely meet.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use rand::RngExt;

const LOW: u16 = 20_000;
const HIGH: u16 = 60_000;

fn bindable(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
}

/// `n` consecutive free ports; returns the first.
pub fn free_consecutive(n: u16) -> u16 {
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let first = rng.random_range(LOW..HIGH - n);
        if (first..first + n).all(bindable) {
            return first;
        }
    }
    panic!("no {n} consecutive free ports found on 127.0.0.1");
}

/// One free port.
pub fn free_port() -> u16 {
    free_consecutive(1)
}

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}
