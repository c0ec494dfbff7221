//! How client commands reach the server and agents: the API URL, the bearer
//! token and the CA to trust, from flags, environment or the server's data
//! directory (`verge-data/admin.token`, `verge-data/ca.crt`, or wherever
//! `VERGE_DATA_DIR` points), so that on the server's own machine commands
//! work with no setup at all.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde_json::json;
use verge_agent::syncclient::Peer;
use verge_client::{Api, Method, Tls};
use verge_security::pki::{self, Identity};
use verge_security::tls;

/// Where the server is and how to authenticate to it.
#[derive(Args, Clone, Debug)]
pub struct Conn {
    /// The server's API URL.
    #[arg(long, env = "VERGE_SERVER", default_value = "https://127.0.0.1:8080", global = true)]
    pub server: String,
    /// API token (default: the server data dir's admin.token).
    #[arg(long, env = "VERGE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA certificate to trust (default: the server data dir's ca.crt).
    #[arg(long, env = "VERGE_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
}

/// The server's data directory on this machine, where `verge server` keeps
/// `admin.token` and `ca.crt`.
fn server_data_dir() -> PathBuf {
    std::env::var_os("VERGE_DATA_DIR").map_or_else(|| PathBuf::from("verge-data"), PathBuf::from)
}

impl Conn {
    /// Admin access to the server at `api` whose data directory is `dir`.
    pub fn for_server(api: &str, dir: &std::path::Path) -> Result<Conn> {
        let token =
            std::fs::read_to_string(dir.join("admin.token")).with_context(|| format!("reading {}", dir.join("admin.token").display()))?;
        Ok(Conn { server: api.to_string(), token: Some(token.trim().to_string()), ca_cert: Some(dir.join("ca.crt")) })
    }

    fn token(&self) -> Option<String> {
        self.token.clone().or_else(|| std::fs::read_to_string(server_data_dir().join("admin.token")).ok())
    }

    fn ca_der(&self) -> Result<Vec<u8>> {
        let path = self.ca_cert.clone().unwrap_or_else(|| server_data_dir().join("ca.crt"));
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the cluster CA certificate {} (set --ca-cert or VERGE_CA_CERT)", path.display()))?;
        Ok(pki::pem_certs(&pem).with_context(|| format!("{}", path.display()))?.remove(0))
    }

    fn tls(&self) -> bool {
        !self.server.starts_with("http://")
    }

    /// A client for the API.
    pub fn api(&self) -> Result<Api> {
        let api = if self.tls() {
            let config = tls::client_config(&self.ca_der()?, None)?;
            Api::secure(&self.server, Tls { config, server_name: tls::server_name(), peer: Some(Identity::Server) })
        } else {
            Api::new(&self.server)
        };
        Ok(api.with_token(self.token()))
    }

    /// How to reach `node`'s data port at `addr`: with TLS, as the holder
    /// of a short-lived certificate the server issues for this token.
    pub async fn peer(&self, api: &Api, node: &str, addr: String) -> Result<Peer> {
        if !self.tls() {
            return Ok(Peer { addr, tls: None });
        }
        let key = pki::new_key()?;
        let answer = api
            .call(Method::POST, "/api/v1/certs", Some(&json!({"csr": pki::csr(&key)?})))
            .await
            .context("getting a client certificate")?;
        let cert = answer["certificate"].as_str().ok_or_else(|| anyhow!("the server sent no certificate"))?;
        let me = tls::Identity::new(cert, key.serialize_der())?;
        let config = tls::client_config(&self.ca_der()?, Some(me))?;
        Ok(Peer { addr, tls: Some(Tls { config, server_name: tls::node_name(), peer: Some(Identity::Node(node.to_string())) }) })
    }
}
