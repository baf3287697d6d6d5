//! The gRPC edge of the cases service.

use followup_platform::auth::Authenticator;
use followup_platform::grpc::GrpcServices;
use followup_proto::followup::cases::v1::cases_service_server::{CasesService, CasesServiceServer};

/// Every API of the service, each behind the JWT interceptor.
pub fn services(auth: Authenticator) -> GrpcServices {
    GrpcServices::new().with(CasesServiceServer::with_interceptor(
        CasesServiceApi,
        auth.clone(),
    ))
}

/// `followup.cases.v1.CasesService`. RPCs not written yet answer UNIMPLEMENTED (the generated defaults).
#[derive(Clone)]
pub struct CasesServiceApi;

#[tonic::async_trait]
impl CasesService for CasesServiceApi {}
