//! The gRPC edge of the plans service.

use followup_platform::auth::Authenticator;
use followup_platform::grpc::GrpcServices;
use followup_proto::followup::plans::v1::catalog_service_server::{
    CatalogService, CatalogServiceServer,
};
use followup_proto::followup::plans::v1::plans_service_server::{PlansService, PlansServiceServer};

/// Every API of the service, each behind the JWT interceptor.
pub fn services(auth: Authenticator) -> GrpcServices {
    GrpcServices::new()
        .with(PlansServiceServer::with_interceptor(
            PlansServiceApi,
            auth.clone(),
        ))
        .with(CatalogServiceServer::with_interceptor(
            CatalogServiceApi,
            auth.clone(),
        ))
}

/// `followup.plans.v1.PlansService`. RPCs not written yet answer UNIMPLEMENTED (the generated defaults).
#[derive(Clone)]
pub struct PlansServiceApi;

#[tonic::async_trait]
impl PlansService for PlansServiceApi {}

/// `followup.plans.v1.CatalogService`. RPCs not written yet answer UNIMPLEMENTED (the generated defaults).
#[derive(Clone)]
pub struct CatalogServiceApi;

#[tonic::async_trait]
impl CatalogService for CatalogServiceApi {}
