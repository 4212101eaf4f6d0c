//! `tollgate-gateway` entry point.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    // `tollgate-gateway fix-permissions ...`: the opt-in init step for
    // volumes that apply no fsGroup (exits when it was asked for).
    tollgate_volumes::run_if_invoked();
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
