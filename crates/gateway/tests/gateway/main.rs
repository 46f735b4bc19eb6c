//! Integration tests of the gateway against real upstream servers on
//! loopback ports, by area.

mod access_log;
mod admin;
mod balancing;
mod failover;
mod limits;
mod proxying;
mod ratelimit;
mod reload;
mod resilience;
mod routing;
mod shutdown;
mod startup;
mod support;
mod wire;
