//! The peer transport on turmoil's simulated network: [`SimListener`] and [`SimConnector`]
//! adapt turmoil's TCP types to the transport's `Listener`/`Connector` traits.
#![allow(dead_code)]

use std::io;

use ehr::ledger_net::{Connector, Listener};

/// A turmoil TCP listener.
pub struct SimListener(pub turmoil::net::TcpListener);

impl SimListener {
    /// Binds `0.0.0.0:port` on the current simulated host.
    pub async fn bind(port: u16) -> io::Result<Self> {
        Ok(Self(
            turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?,
        ))
    }
}

impl Listener for SimListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, String)> {
        let (s, a) = self.0.accept().await?;
        Ok((s, a.to_string()))
    }
}

/// Connects over turmoil TCP to `host:port`.
#[derive(Debug, Clone, Copy)]
pub struct SimConnector;

impl Connector for SimConnector {
    type Stream = turmoil::net::TcpStream;

    async fn connect(&self, addr: String) -> io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect(addr).await
    }
}
