use std::process::ExitCode;

fn main() -> ExitCode {
    followup_platform::service::main(
        followup_cases::INFO,
        &followup_cases::MIGRATOR,
        followup_cases::Settings::default(),
        followup_cases::Service::build,
    )
}
