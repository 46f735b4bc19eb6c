//! Binding and configuration errors.

use scalestack_gateway::Gateway;

use crate::support::*;

#[tokio::test]
async fn port_zero_binds_free_ports() {
    let upstream = Upstream::start("a").await;
    let gateway = Gateway::bind(&config(&[upstream.addr])).await.unwrap();
    assert_ne!(gateway.local_addr().port(), 0);
    assert_ne!(gateway.admin_addr().port(), 0);
    assert_ne!(gateway.local_addr(), gateway.admin_addr());
}

#[tokio::test]
async fn a_taken_port_is_reported_with_component_key_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let upstream = Upstream::start("a").await;

    let mut on_client_port = config(&[upstream.addr]);
    on_client_port.listen = addr;
    let message = Gateway::bind(&on_client_port)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&format!(
            "gateway: cannot listen on {addr} (gateway.listen): "
        )),
        "{message}"
    );

    let mut on_admin_port = config(&[upstream.addr]);
    on_admin_port.admin_listen = addr;
    let message = Gateway::bind(&on_admin_port).await.unwrap_err().to_string();
    assert!(
        message.contains(&format!("{addr} (gateway.admin_listen)")),
        "{message}"
    );
}

#[tokio::test]
async fn an_empty_endpoint_list_is_refused_by_key() {
    let message = Gateway::bind(&config(&[])).await.unwrap_err().to_string();
    assert!(message.contains("gateway.pools[0].endpoints"), "{message}");
    assert!(message.contains("empty"), "{message}");
}
