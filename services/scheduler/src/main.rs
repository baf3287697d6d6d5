use std::process::ExitCode;

fn main() -> ExitCode {
    followup_platform::service::main(
        followup_scheduler::INFO,
        &followup_scheduler::MIGRATOR,
        followup_scheduler::Settings::default(),
        followup_scheduler::Service::build,
    )
}
