//! Integration tests of the gateway against real upstream servers on
//! loopback ports, by area.

mod admin;
mod failover;
mod limits;
mod proxying;
mod shutdown;
mod startup;
mod support;
