use std::process::ExitCode;

// The ingest allocates and frees many small buffers per request across threads: under load glibc's
// allocator took about a third of the service's CPU (perf); with mimalloc a request cost 43 µs of CPU
// instead of 50-70 µs (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    followup_platform::service::main(
        followup_engagement::INFO,
        &followup_engagement::MIGRATOR,
        followup_engagement::Settings::default(),
        followup_engagement::Service::build,
    )
}
