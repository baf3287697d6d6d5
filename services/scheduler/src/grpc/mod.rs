//! The gRPC edge of the scheduler service.

use followup_platform::auth::Authenticator;
use followup_platform::grpc::GrpcServices;
use followup_proto::followup::scheduler::v1::scheduler_service_server::{
    SchedulerService, SchedulerServiceServer,
};
use followup_proto::followup::scheduler::v1::waitlist_service_server::{
    WaitlistService, WaitlistServiceServer,
};

/// Every API of the service, each behind the JWT interceptor.
pub fn services(auth: Authenticator) -> GrpcServices {
    GrpcServices::new()
        .with(SchedulerServiceServer::with_interceptor(
            SchedulerServiceApi,
            auth.clone(),
        ))
        .with(WaitlistServiceServer::with_interceptor(
            WaitlistServiceApi,
            auth.clone(),
        ))
}

/// `followup.scheduler.v1.SchedulerService`. RPCs not written yet answer UNIMPLEMENTED (the generated defaults).
#[derive(Clone)]
pub struct SchedulerServiceApi;

#[tonic::async_trait]
impl SchedulerService for SchedulerServiceApi {}

/// `followup.scheduler.v1.WaitlistService`. RPCs not written yet answer UNIMPLEMENTED (the generated defaults).
#[derive(Clone)]
pub struct WaitlistServiceApi;

#[tonic::async_trait]
impl WaitlistService for WaitlistServiceApi {}
