//! A bare Pingora proxy (no routing, no policies) with the gateway's server
//! settings, for `perf` comparisons and the `pingora` rows of `make bench`:
//! how much of a request's cost is Pingora's and how much is the gateway's.
//!
//!     cargo run --release --example bare_proxy -- 127.0.0.1:17010 127.0.0.1:17001

use async_trait::async_trait;
use mimalloc::MiMalloc;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

struct Bare(String);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0.as_str(), false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = (args[1].clone(), args[2].clone());
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let conf =
        ServerConf { threads, work_stealing: false, upstream_keepalive_pool_size: 4096, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare(upstream));
    // The gateway's default client write buffer (--write-buffer-bytes).
    proxy.add_listener(ListenerConfig::tcp(listen).l4_buffer(L4BufferSettings::default().write(16384)));
    server.add_service(proxy);
    server.run_forever();
}
