//! The gRPC edge of the notifications service.

use followup_platform::auth::Authenticator;
use followup_platform::grpc::GrpcServices;
use followup_proto::followup::notifications::v1::notifications_service_server::{
    NotificationsService, NotificationsServiceServer,
};

/// Every API of the service, each behind the JWT interceptor.
pub fn services(auth: Authenticator) -> GrpcServices {
    GrpcServices::new().with(NotificationsServiceServer::with_interceptor(
        NotificationsServiceApi,
        auth.clone(),
    ))
}

/// `followup.notifications.v1.NotificationsService`. RPCs not written yet answer UNIMPLEMENTED (the generated defaults).
#[derive(Clone)]
pub struct NotificationsServiceApi;

#[tonic::async_trait]
impl NotificationsService for NotificationsServiceApi {}
