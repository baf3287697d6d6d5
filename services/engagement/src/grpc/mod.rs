//! The gRPC edge of the engagement service.

use followup_platform::auth::Authenticator;
use followup_platform::grpc::GrpcServices;
use followup_proto::followup::engagement::v1::engagement_service_server::{
    EngagementService, EngagementServiceServer,
};

/// Every API of the service, each behind the JWT interceptor.
pub fn services(auth: Authenticator) -> GrpcServices {
    GrpcServices::new().with(EngagementServiceServer::with_interceptor(
        EngagementServiceApi,
        auth.clone(),
    ))
}

/// `followup.engagement.v1.EngagementService`. RPCs not written yet answer UNIMPLEMENTED (the generated defaults).
#[derive(Clone)]
pub struct EngagementServiceApi;

#[tonic::async_trait]
impl EngagementService for EngagementServiceApi {}
