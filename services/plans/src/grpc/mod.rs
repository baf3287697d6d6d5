//! The gRPC edge of the plans service.

pub mod catalog;
pub mod convert;
pub mod plans;

use followup_platform::auth::Authenticator;
use followup_platform::grpc::GrpcServices;
use followup_proto::followup::plans::v1::catalog_service_server::CatalogServiceServer;
use followup_proto::followup::plans::v1::plans_service_server::PlansServiceServer;

pub use catalog::CatalogServiceApi;
pub use plans::PlansServiceApi;

use crate::app::App;

/// Every API of the service, each behind the JWT interceptor.
pub fn services(app: App, auth: Authenticator) -> GrpcServices {
    GrpcServices::new()
        .with(PlansServiceServer::with_interceptor(
            PlansServiceApi { app: app.clone() },
            auth.clone(),
        ))
        .with(CatalogServiceServer::with_interceptor(
            CatalogServiceApi { app },
            auth,
        ))
}
