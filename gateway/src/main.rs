//! `tollgate-gateway` entry point.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    let config = match tollgate_gateway::config::Config::load() {
        Ok(c) => c,
        Err(tollgate_gateway::config::ConfigError::Args(e)) => e.exit(),
        Err(e) => {
            eprintln!("tollgate-gateway: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = tollgate_gateway::server::run(config) {
        eprintln!("tollgate-gateway: {e:#}");
        std::process::exit(1);
    }
}
