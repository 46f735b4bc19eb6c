//! Free loopback ports for servers started by tests.
//!
//! A port is free when we can bind it; we release it right before the server
//! binds, which leaves a small window for a race with another test. Ports are
//! drawn at random below the kernel's ephemeral range (where every outgoing
//! connection takes its local port, so a port free now may be taken a moment
//! later) and above the defaults (8080, 9000...), so that parallel tests,
//! client sockets and a developer's running stack rarely meet.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use rand::RngExt;

const LOW: u16 = 10_000;

/// The first port of the kernel's ephemeral range (32768 by default).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|&p: &u16| p > LOW + 1_000)
        .unwrap_or(32_768)
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
}

/// `n` consecutive free ports; returns the first.
pub fn free_consecutive(n: u16) -> u16 {
    let mut rng = rand::rng();
    let high = ephemeral_start();
    for _ in 0..1_000 {
        let first = rng.random_range(LOW..high - n);
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
