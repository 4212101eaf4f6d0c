//! tollgate-gateway: the Pingora data plane and the management API.

pub mod analytics;
pub mod client_tls;
pub mod config;
pub mod dns;
pub mod head_timeout;
pub mod jws;
pub mod key_manager;
pub mod management;
pub mod metrics;
pub mod oauth;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod psd2;
pub mod reload;
pub mod respond;
pub mod route;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod store_api;
pub mod throttle;
pub mod tls;
pub mod traffic;
pub mod upstream;
