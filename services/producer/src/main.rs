//! `crier-producer`: the Publisher gRPC service as a process.

use clap::Parser;
use crier_producer::Config;

/// Crier producer service: accepts citizen-service events from department systems over gRPC
/// (crier.v1.Publisher) and writes them durably to Kafka.
///
/// Settings come from defaults, then the TOML file given by --config, then environment
/// variables named CRIER_<SECTION>__<KEY>, for example CRIER_KAFKA__BOOTSTRAP_SERVERS=kafka:9092
/// or CRIER_GRPC__LISTEN=0.0.0.0:50051. See README.md, "Configuration", for every setting.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    #[command(flatten)]
    service: crier_runtime::ServiceArgs,
}

// Every event costs dozens of short-lived allocations across gRPC, prost, the audit record
// and librdkafka (whose malloc and free go here too): glibc's malloc was a fifth of the CPU
// in the profiles. jemalloc, against mimalloc before it, cut both services' idle RSS by a
// third to a half and the consumer's with 2,000 streams by a third, for the same CPU or
// less (PERFORMANCE.md, session 17).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = crier_runtime::start::<Config>(&Args::parse().service).await?;
    if let Some((config, listener, shutdown)) = started {
        crier_producer::serve(config, listener, shutdown).await?;
    }
    Ok(())
}
