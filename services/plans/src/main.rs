use std::process::ExitCode;

fn main() -> ExitCode {
    followup_platform::service::main(
        followup_plans::INFO,
        &followup_plans::MIGRATOR,
        followup_plans::Settings::default(),
        followup_plans::Service::build,
    )
}
